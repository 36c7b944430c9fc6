import sys

from llmchat_metrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
