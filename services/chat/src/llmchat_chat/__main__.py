from llmchat_chat.main import run

if __name__ == "__main__":
    run()
