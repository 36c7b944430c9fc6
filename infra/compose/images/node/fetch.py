"""Downloads one npm package's tarball, checks its sha512 integrity against the registry's
metadata and unpacks its `package/` folder into a directory: fetch.py REGISTRY NAME VERSION DIR."""

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

registry, name, version, target = sys.argv[1:5]
with urllib.request.urlopen(f"{registry}/{name}/{version}", timeout=60) as answer:  # noqa: S310
    dist = json.load(answer)["dist"]
with urllib.request.urlopen(dist["tarball"], timeout=600) as answer:  # noqa: S310
    data = answer.read()
algorithm, _, expected = dist["integrity"].partition("-")
if algorithm != "sha512" or base64.b64encode(hashlib.sha512(data).digest()).decode() != expected:
    sys.exit(f"{name}@{version}: the tarball does not match the registry's integrity {dist['integrity']}")
out = Path(target)
with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    # The "tar" filter (no absolute paths, nothing outside `out`) where this Python has it
    # (3.11.4+, and Debian's backport).
    if hasattr(tarfile, "tar_filter"):
        archive.extraction_filter = tarfile.tar_filter
    for member in archive.getmembers():
        if not member.name.startswith("package/"):
            continue
        member.name = member.name.removeprefix("package/")
        archive.extract(member, out)
print(f"{name}@{version}: {len(data)} bytes, sha512 checked, into {out}")
