import sys

from maskgate.cli import main

sys.exit(main())
