"""Benchmark: seal and unseal 1 MiB chunks with the envelope of format version 2 (one AES-256-GCM key for every object)
and of format version 3 (a key per object: HKDF-SHA256 of the data key with a random salt; optionally Padme padding),
and the plain (unencrypted) envelope of format 4 (BLAKE3 checksum) and format 5 (XXH3-128 checksum).

Usage (from the repo root, after `source scripts/env.sh`):
    python benchmarks/bench_envelope.py [--chunk-kib 1024] [--chunks 64] [--repeats 7] [--output FILE.json]

Every variant seals ``--chunks`` chunks of random (incompressible) data, then unseals them, ``--repeats`` times; the
variants run interleaved so that load from other work on the machine hits all of them alike. No compressor is used:
the numbers are the cost of the envelope (key derivation, AES-GCM, padding copies) alone. The version 2 envelope is
reproduced here as it was (``V2Keys``: ``AESGCM(data_key)`` built once, random 96-bit nonce, AAD = header + name).
Reports medians in MB/s (10^6 bytes of chunk data per second), by wall time and by this process's CPU time, and
the cost of one per-object key setup (HKDF + AESGCM construction) in microseconds.
"""
import argparse
import json
import os
import platform
import statistics
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_crypto import (  # noqa: E402
    KIND_CHUNK, RepositoryKeys,
)

KiB = 1024
HEADER_V2 = struct.Struct(">4sBB")


class V2Keys:
    """The encrypted envelope of format version 2, for comparison: one AES-GCM object for every chunk."""

    def __init__(self, data_key):
        self.aead = AESGCM(data_key)

    def seal(self, kind, name, data):
        header = HEADER_V2.pack(b"HVB1", kind, 0x02)
        nonce = os.urandom(12)
        return header + nonce + self.aead.encrypt(nonce, data, header + name.encode("utf-8"))

    def unseal(self, kind, name, blob):
        header = blob[:HEADER_V2.size]
        return self.aead.decrypt(blob[HEADER_V2.size:HEADER_V2.size + 12], blob[HEADER_V2.size + 12:], header + name.encode("utf-8"))


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", help="also write the raw numbers as JSON here")
    args = parser.parse_args()

    chunk_size = args.chunk_kib * KiB
    chunks = [os.urandom(chunk_size) for _index in range(args.chunks)]
    names = ["chunks/%02x/%064x" % (index % 256, index) for index in range(args.chunks)]
    keys_v3 = RepositoryKeys(os.urandom(32), os.urandom(32))
    keys_v3_padded = RepositoryKeys(keys_v3.data_key, keys_v3.id_key)
    keys_v3_padded.padding = "padme"
    plain_v4 = RepositoryKeys()             # plain repository of format 4 (release 0.1.0): BLAKE3 checksum
    plain_v4.format_version = 4
    variants = {"v2 (one key)": V2Keys(keys_v3.data_key), "v3 (key per object)": keys_v3, "v3 + padme": keys_v3_padded,
                "plain, format 4 (BLAKE3 checksum)": plain_v4, "plain, format 5 (XXH3-128 checksum)": RepositoryKeys()}

    samples = {name: {"seal_wall": [], "seal_cpu": [], "unseal_wall": [], "unseal_cpu": []} for name in variants}
    stored = {name: 0 for name in variants}
    for _repeat in range(args.repeats):
        for name, keys in variants.items():
            blobs = []
            wall, cpu = timed(lambda: blobs.extend(keys.seal(KIND_CHUNK, n, c) for n, c in zip(names, chunks)))  # noqa: B023
            samples[name]["seal_wall"].append(wall)
            samples[name]["seal_cpu"].append(cpu)
            stored[name] = sum(len(blob) for blob in blobs)
            wall, cpu = timed(lambda: [keys.unseal(KIND_CHUNK, n, b) for n, b in zip(names, blobs)])  # noqa: B023
            samples[name]["unseal_wall"].append(wall)
            samples[name]["unseal_cpu"].append(cpu)

    # The per-object overhead of version 3 on its own: one HKDF derivation and one AESGCM construction.
    salt = os.urandom(16)
    setups = 20000
    # The benchmark measures this private step on purpose: it is the whole per-object cost of format 3.
    wall = timed(lambda: [keys_v3._object_cipher(KIND_CHUNK, salt) for _index in range(setups)])[0]  # pylint: disable=protected-access
    key_setup_us = wall / setups * 1e6

    total = chunk_size * args.chunks
    print("python %s, cryptography, %s, load average %s" % (platform.python_version(), platform.machine(), os.getloadavg()))
    print("%d chunks of %d KiB, random data, %d repeats (medians)" % (args.chunks, args.chunk_kib, args.repeats))
    print("| envelope | seal MB/s (wall) | seal MB/s (CPU) | unseal MB/s (wall) | unseal MB/s (CPU) | stored bytes per chunk |")
    print("|---|---|---|---|---|---|")
    result = {"chunk_size": chunk_size, "chunks": args.chunks, "repeats": args.repeats, "key_setup_us": key_setup_us,
              "load": os.getloadavg(), "variants": {}}
    for name in variants:
        rates = {what: total / statistics.median(values) / 1e6 for what, values in samples[name].items()}
        per_chunk = stored[name] / args.chunks
        result["variants"][name] = dict(rates, stored_per_chunk=per_chunk, samples=samples[name])
        row = (name, rates["seal_wall"], rates["seal_cpu"], rates["unseal_wall"], rates["unseal_cpu"], per_chunk, per_chunk - chunk_size)
        print("| %s | %.0f | %.0f | %.0f | %.0f | %d (+%d) |" % row)
    print("per-object key setup (HKDF-SHA256 + AESGCM construction): %.1f us" % key_setup_us)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
