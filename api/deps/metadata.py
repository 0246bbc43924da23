"""`?metadata[key]=value` on a list: the pairs every listed item must have (service/metadata.py checks them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

PREFIX, SUFFIX = "metadata[", "]"

# FastAPI cannot declare a deepObject parameter; this documents it in the OpenAPI document.
OPENAPI = {"parameters": [{
    "name": "metadata", "in": "query", "required": False, "style": "deepObject", "explode": True,
    "description": "metadata[key]=value: only items whose metadata has this pair; several pairs must all match",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}]}


def metadata_filter(request: Request) -> dict[str, str]:
    """The query's metadata[key]=value pairs (the last value of a key repeated)."""
    return {name[len(PREFIX):-len(SUFFIX)]: value for name, value in request.query_params.multi_items()
            if name.startswith(PREFIX) and name.endswith(SUFFIX)}


MetadataFilter = Annotated[dict[str, str], Depends(metadata_filter)]
