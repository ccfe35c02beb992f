import sys

from afb.entry import main

sys.exit(main())
