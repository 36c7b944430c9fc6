import sys

from llmchat_auth.cli import main

if __name__ == "__main__":
    sys.exit(main())
