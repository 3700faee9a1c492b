#!/usr/bin/env python3
"""An independent checker of v2 proof files, written from docs/proof-format.md alone.

Usage:
    check_proof.py inclusion FILE PUBKEY_B64
    check_proof.py consistency FILE PUBKEY_B64

Exit 0 and print "ok ..." when the proof holds; exit 1 and print "invalid: <reason>" when it
does not (or the file is malformed); exit 2 on wrong usage. Needs `cryptography` (Ed25519).
"""

import base64
import binascii
import hashlib
import json
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEX = re.compile(r"\A[0-9a-f]{64}\Z")
EMPTY_ROOT = hashlib.sha256(b"").digest()


class Invalid(Exception):
    pass


def H(data):
    return hashlib.sha256(data).digest()


def node(left, right):
    return H(b"\x01" + left + right)


def b64(text, what, length=None):
    if not isinstance(text, str):
        raise Invalid(f"{what} is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise Invalid(f"{what} is not canonical base64")
    if length is not None and len(raw) != length:
        raise Invalid(f"{what} is {len(raw)} bytes, not {length}")
    return raw


def hex32(text, what):
    if not isinstance(text, str) or not HEX.match(text):
        raise Invalid(f"{what} is not 64 lower-case hex digits")
    return bytes.fromhex(text)


def integer(obj, key, lo, hi, where):
    v = obj.get(key) if isinstance(obj, dict) else None
    if type(v) is not int:
        raise Invalid(f"{where}{key} is missing or not an integer")
    if not lo <= v <= hi:
        raise Invalid(f"{where}{key} = {v} is out of range")
    return v


def string(obj, key, where):
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, str):
        raise Invalid(f"{where}{key} is missing or not a string")
    return v


I32 = (-(2**31), 2**31 - 1)
I64 = (-(2**63), 2**63 - 1)
U64 = (0, 2**64 - 1)


def checkpoint(c, public, where):
    """Checks a checkpoint's form and signature; returns (fields, id hex, root bytes)."""
    if not isinstance(c, dict):
        raise Invalid(f"{where} is not an object")
    w = where + "."
    f = {
        "raw_partition": integer(c, "raw_partition", *I32, w),
        "epoch": string(c, "epoch", w),
        "tree_size": integer(c, "tree_size", *U64, w),
        "root": string(c, "root", w),
        "raw_offset_start": integer(c, "raw_offset_start", *I64, w),
        "raw_offset_end": integer(c, "raw_offset_end", *I64, w),
        "prev": string(c, "prev", w),
        "signed_at": integer(c, "signed_at", *I64, w),
        "key_id": string(c, "key_id", w),
    }
    for k in ("epoch", "key_id"):
        if "\n" in f[k]:
            raise Invalid(f"{w}{k} contains a newline")
    root = hex32(f["root"], w + "root")
    hex32(f["prev"], w + "prev")
    if f["tree_size"] == 0 and root != EMPTY_ROOT:
        raise Invalid(f"{w}root of an empty tree is not SHA-256 of nothing")
    signature = b64(c.get("signature"), w + "signature", 64)
    message = (
        "audit-checkpoint-v2\n"
        f"raw_partition={f['raw_partition']}\n"
        f"epoch={f['epoch']}\n"
        f"tree_size={f['tree_size']}\n"
        f"root={f['root']}\n"
        f"raw_offset_start={f['raw_offset_start']}\n"
        f"raw_offset_end={f['raw_offset_end']}\n"
        f"prev={f['prev']}\n"
        f"signed_at={f['signed_at']}\n"
        f"key_id={f['key_id']}\n"
    ).encode("utf-8")
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise Invalid(f"{where} signature does not verify under the public key") from None
    return f, H(message).hex(), root


def verify_inclusion(index, size, leaf, path, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 == 1 or fn == sn:
            r = node(p, r)
            if fn & 1 == 0:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old, new, old_root, new_root, proof):
    if old > new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    if old & (old - 1) == 0:
        proof = [old_root] + proof
    fn, sn = old - 1, new - 1
    while fn & 1 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 == 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if fn & 1 == 0:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def hashes(obj, key):
    v = obj.get(key)
    if not isinstance(v, list):
        raise Invalid(f"{key} is missing or not an array")
    return [hex32(x, f"{key}[{i}]") for i, x in enumerate(v)]


def check_format(doc, name):
    if not isinstance(doc, dict):
        raise Invalid("the file is not a JSON object")
    if doc.get("format") != name:
        raise Invalid(f"format is not {name}")


def inclusion(doc, public):
    check_format(doc, "audit-inclusion-proof-v2")
    event_id = string(doc, "event_id", "")
    raw_partition = integer(doc, "raw_partition", *I32, "")
    epoch = string(doc, "epoch", "")
    seq = integer(doc, "seq", *I64, "")
    tree_size = integer(doc, "tree_size", *U64, "")
    path = hashes(doc, "audit_path")
    content = b64(doc.get("content_b64"), "content_b64")
    c, cid, root = checkpoint(doc.get("checkpoint"), public, "checkpoint")
    for k, v in (("raw_partition", raw_partition), ("epoch", epoch), ("tree_size", tree_size)):
        if c[k] != v:
            raise Invalid(f"checkpoint.{k} differs from the proof's {k}")
    if not 0 <= seq < tree_size:
        raise Invalid(f"seq {seq} is not in the tree of {tree_size}")
    try:
        parsed = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("content is not JSON") from None
    inner = parsed.get("event") if isinstance(parsed, dict) else None
    if not isinstance(inner, dict) or inner.get("event_id") != event_id:
        raise Invalid("content's event.event_id is not event_id")
    leaf_data = (
        b"audit-leaf-v2\n"
        + struct.pack(">i", raw_partition)
        + epoch.encode("utf-8")
        + b"\n"
        + struct.pack(">q", seq)
        + H(content)
    )
    leaf = H(b"\x00" + leaf_data)
    if not verify_inclusion(seq, tree_size, leaf, path, root):
        raise Invalid("the audit path does not lead from the event's leaf to the signed root")
    return (
        f"ok inclusion event_id={event_id} partition={raw_partition} epoch={epoch} "
        f"seq={seq} tree_size={tree_size} checkpoint={cid}"
    )


def consistency(doc, public):
    check_format(doc, "audit-consistency-proof-v2")
    proof = hashes(doc, "proof")
    old, old_id, old_root = checkpoint(doc.get("old"), public, "old")
    new, new_id, new_root = checkpoint(doc.get("new"), public, "new")
    for k in ("raw_partition", "epoch"):
        if old[k] != new[k]:
            raise Invalid(f"old and new have different {k}")
    if old["tree_size"] > new["tree_size"]:
        raise Invalid("old tree is larger than new")
    if not verify_consistency(old["tree_size"], new["tree_size"], old_root, new_root, proof):
        raise Invalid("the proof does not show new extends old")
    adjacent = " adjacent" if new["prev"] == old_id else ""
    return (
        f"ok consistency partition={old['raw_partition']} epoch={old['epoch']} "
        f"{old['tree_size']} -> {new['tree_size']} old={old_id} new={new_id}{adjacent}"
    )


def no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise Invalid(f"member {k} appears twice")
        obj[k] = v
    return obj


def main(argv):
    if len(argv) != 4 or argv[1] not in ("inclusion", "consistency"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    kind, path, key = argv[1:]
    try:
        try:
            public = Ed25519PublicKey.from_public_bytes(b64(key, "PUBKEY_B64", 32))
        except ValueError:
            raise Invalid("PUBKEY_B64 is not an Ed25519 public key") from None
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"), object_pairs_hook=no_duplicates)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise Invalid(f"cannot read {path} as JSON: {e}") from None
        print(inclusion(doc, public) if kind == "inclusion" else consistency(doc, public))
        return 0
    except Invalid as e:
        print(f"invalid: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
