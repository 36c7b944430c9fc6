import sys

from llmchat_history.cli import main

if __name__ == "__main__":
    sys.exit(main())
