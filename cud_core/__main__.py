import sys

from cud_core.cli import main

sys.exit(main())
