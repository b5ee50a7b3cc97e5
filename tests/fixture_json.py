"Editing a fixture's JSON record, for the tests that check the compatibility tests follow it."
import json


def edited(meta: dict, old: str, new: str) -> dict:
    "The fixture JSON with the text `old` (which must be there) replaced by `new`."
    s = json.dumps(meta)
    assert old in s, old
    return json.loads(s.replace(old, new))
