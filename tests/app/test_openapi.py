"""The OpenAPI document is self-contained: every reference points into it (ReDoc needs that)."""

import json

from fastapi.testclient import TestClient


def test_every_schema_reference_resolves_inside_the_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    assert "#/$defs/" not in text
    schemas = document["components"]["schemas"]
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, ref
