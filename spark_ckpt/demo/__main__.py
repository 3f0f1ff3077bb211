"""``python -m spark_ckpt.demo``: run the demo, or (``worker ...``) one of its worker processes."""

import sys

from .command import main

sys.exit(main())
