"""Seed the fuzz corpora with gunicorn's request vectors (decoded as gunicorn's tests do).

Usage: python3 fuzz/seeds.py [VECTOR_DIR]   (default: ../shared/vectors/gunicorn from the repo root)
Writes fuzz/corpus/head_parser/* and fuzz/corpus/chunked_decoder/* (both git-ignored). Each seed
starts with the split byte the targets read first.
"""
import importlib.util
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
spec = importlib.util.spec_from_file_location("dump", os.path.join(root, "http/tests/vectors/dump.py"))
dump = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dump)

vectors = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "shared", "vectors", "gunicorn")
for target in ("head_parser", "chunked_decoder"):
    os.makedirs(os.path.join(here, "corpus", target), exist_ok=True)
count = 0
for kind in ("valid", "invalid"):
    for fname in sorted(os.listdir(os.path.join(vectors, kind))):
        if not fname.endswith(".http"):
            continue
        with open(os.path.join(vectors, kind, fname), "rb") as f:
            data = dump.decode_http(f.read())
        name = f"{kind}-{fname[:-5]}"
        with open(os.path.join(here, "corpus", "head_parser", name), "wb") as f:
            f.write(bytes([len(data) // 2 % 256]) + data)
        head_end = data.find(b"\r\n\r\n")
        if b"chunked" in data[:head_end] and head_end >= 0:
            with open(os.path.join(here, "corpus", "chunked_decoder", name), "wb") as f:
                f.write(b"\x07" + data[head_end + 4:])
        count += 1
print(f"seeded {count} vectors")
