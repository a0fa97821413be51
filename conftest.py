"""Repository root: keeps pytest out of folders that hold generated files or installed brokers, not tests."""

collect_ignore = ["brokers", "certs", "reports", "build"]
