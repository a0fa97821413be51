"""Brokers under test: the Broker interface (broker.py), definitions read from the checkout's brokers/ folder
(definitions.py), the process and docker backends (backends/), locally built images, the readiness probe,
capability discovery for URL brokers, the cross-process port allocator and the reaper of leftovers."""
