import sys

from integration.chaos.harness import main

sys.exit(main(sys.argv[1:]))
