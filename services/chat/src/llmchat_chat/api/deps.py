from fastapi import Request

from llmchat_chat.service import ChatService


def get_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service
