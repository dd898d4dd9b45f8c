"""Benchmark model loading: the embedded model's one-time GGUF conversion and its cached load.

Prints one JSON line. `--convert` also times a fresh conversion into a temporary cache.
"""
import argparse
import json
import os
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"

from cud_core.engine.models import load_model


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--convert", action="store_true", help="also time a fresh GGUF conversion")
    args = parser.parse_args()
    figures = {}
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("CUD_CACHE_DIR")
            os.environ["CUD_CACHE_DIR"] = tmp
            _, figures["convert_and_load_s"] = timed(lambda: load_model("embedded", device="cpu"))
            if old is None:
                del os.environ["CUD_CACHE_DIR"]
            else:
                os.environ["CUD_CACHE_DIR"] = old
    load_model("embedded", device="cpu")  # make sure the cache exists
    _, figures["cached_load_s"] = timed(lambda: load_model("embedded", device="cpu"))
    if "convert_and_load_s" in figures:
        figures["speedup"] = figures["convert_and_load_s"] / figures["cached_load_s"]
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
