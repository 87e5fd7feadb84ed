"""OpenAPI helpers shared by the routers: problem responses and multipart upload bodies."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from api.problems import PROBLEM_MEDIA_TYPE
from api.schemas import Problem


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document the problem+json answers a route gives besides its success."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


def file_upload_body(description: str) -> dict[str, Any]:
    """The request body of an upload route that streams multipart itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": description,
                            }
                        },
                    }
                }
            },
        }
    }
