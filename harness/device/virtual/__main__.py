import sys

from harness.device.virtual.cli import main

sys.exit(main())
