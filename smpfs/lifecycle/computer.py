"""Computers: a (case-insensitive, NetBIOS-like) name mapped to the Unix uid its
migration tool runs as. The kernel tells the SMP who calls (peer credentials),
so a computer is identified by its uid, never by a name it claims.

Over the network a computer proves who it is with its **secret** (made by
``computer add``, shown and rotated by ``computer secret``): smp.db keeps it
wrapped under the master key and an HTTPS verifier of it; Samba's passdb gets
its NT hash (see smpfs.crypto.secrets). Nothing here returns the secret except
:func:`secret`, and nothing logs or audits it.
"""
from __future__ import annotations

import pwd
import re
import time

from ..crypto import secrets as secretmod
from ..errors import Conflict, PermissionDenied, UnknownComputer, UsageError
from . import audit

#: What a computer row shows (never the wrapped secret or its verifier).
_PUBLIC = "name, uid, created_at, secret_set_at"

#: A new computer's name: NetBIOS-like, so that it fits everywhere a name is shown or logged.
NAME_RULE = ("1 to 15 characters: letters, digits, '-', '_' and '.', "
             "starting with a letter or digit (like a NetBIOS name), e.g. PC-0042")
_NEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")
#: Names looked up: also those added before the 15-character rule (at most 63).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def valid_name(name) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def shown(text, n: int = 20) -> str:
    """A caller's string as an error message may quote it: escaped and short."""
    text = str(text)
    return repr(text[:n]) + (f"… ({len(text)} characters)" if len(text) > n else "")


def check_name(name, new: bool = False) -> str:
    """``name`` if it is a valid computer name (``new``: for a computer being
    added), else UsageError; checked before anything is looked up or stored."""
    if not (isinstance(name, str) and (_NEW_NAME if new else _NAME).fullmatch(name)):
        raise UsageError(f"invalid computer name {shown(name)}", f"a computer name is {NAME_RULE}")
    return name


def parse_uid(text) -> int:
    """A uid given as a number or a user name."""
    s = str(text).strip()
    if s.isascii() and s.isdigit():            # not '²' or other Unicode digits int() refuses
        if int(s) >= 2**32 - 1:                # (uid_t)-1 means "no uid" to the kernel
            raise UsageError("uid out of range", "a uid is a number from 1 to 4294967294")
        return int(s)
    try:
        return pwd.getpwnam(s).pw_uid
    except KeyError:
        raise UsageError("no such user", "give a numeric uid or an existing user name")


#: A secret given to ``computer add --secret-file`` (one that computer already has
#: on another SMP of its site): printable ASCII, no spaces, at least 22 characters
#: (128 bits of base64, as ``computer secret`` prints 32).
_GIVEN_SECRET = re.compile(r"[\x21-\x7e]{22,256}")


def check_given_secret(value: str) -> str:
    if not _GIVEN_SECRET.fullmatch(value or ""):
        raise UsageError("the secret must be 22 to 256 printable characters with no spaces (at least 128 bits)",
                         "give the secret `smpfs computer secret NAME` prints on the SMP that made it")
    return value


def add_computer(smp, name: str, uid, secret_value: str | None = None) -> dict:
    """Add a computer with a new secret, or with ``secret_value``: the one it already
    has on another SMP of its site, so the same credentials work on every SMP."""
    if secret_value is not None:
        check_given_secret(secret_value)
    check_name(name, new=True)
    uid = parse_uid(uid)
    if uid == 0:
        raise UsageError("a computer cannot run as root (uid 0)",
                         "root is the SMP admin; give each computer its own unprivileged uid")
    with smp.tx():
        if (c := get(smp, name, missing_ok=True)) is not None:
            raise Conflict(f"computer {c['name']} already exists (uid {c['uid']})")
        if (c := by_uid(smp, uid)) is not None:
            raise Conflict(f"uid {uid} is already computer {c['name']}",
                           "each computer needs its own uid")
        _insert(smp, name, uid, secret_value)
    audit.record(smp, 0, "computer_add", computer=name, computer_uid=uid,
                 **({"secret_given": True} if secret_value is not None else {}))
    return get(smp, name)


def _insert(smp, name: str, uid: int, secret: str | None = None) -> None:
    """The computer's row, with ``secret`` or a fresh one (inside the caller's transaction)."""
    secret = secret if secret is not None else secretmod.new_secret()
    now = time.time()
    smp.db.table("computers").insert({"name": name, "uid": uid, "created_at": now,
                                      "secret_wrapped": secretmod.wrap_secret(smp.master_key(), name, secret),
                                      "secret_verifier": secretmod.make_verifier(secret), "secret_set_at": now})


def get(smp, name: str, missing_ok: bool = False) -> dict | None:
    check_name(name)
    row = next(iter(smp.rows_where("computers", "name = ?", (name,), select=_PUBLIC)), None)
    if row is None and not missing_ok:
        raise UnknownComputer(f"unknown computer {name!r}",
                              f"an admin adds it with `smpfs computer add {name} --uid UID`")
    return row


def by_uid(smp, uid: int) -> dict | None:
    return next(iter(smp.rows_where("computers", "uid = ?", (uid,), select=_PUBLIC)), None)


def list_computers(smp) -> list[dict]:
    return smp.rows_where("computers", select=_PUBLIC, order_by="name")


def remove_computer(smp, name: str) -> dict:
    c = get(smp, name)
    live = smp.query("SELECT * FROM associations WHERE removed_at IS NULL AND (source=? OR dest=?)",
                     (c["name"], c["name"]))
    if live:
        pairs = ", ".join(f"{a['source']} -> {a['dest']}" for a in live)
        raise Conflict(f"computer {c['name']} is still in association(s): {pairs}",
                       "remove them first with `smpfs association remove SOURCE DEST`")
    with smp.tx():
        smp.db.table("computers").delete_where("name = ?", (c["name"],))
    audit.record(smp, 0, "computer_remove", computer=c["name"], computer_uid=c["uid"])
    return c


def resolve_caller(smp, caller_uid: int, computer: str | None, action: str) -> dict:
    """The computer a caller acts for.

    Root acts for any computer and must name it. Any other uid acts only for
    the computer mapped to it; a name, if given, must be that computer.
    """
    if computer:
        check_name(computer)
    if caller_uid == 0:
        if not computer:
            raise UsageError(f"name the computer: root may {action} for any computer",
                             f"e.g. smpfs {action.replace('_', ' ')} PC-0042")
        return get(smp, computer)
    mine = by_uid(smp, caller_uid)
    if mine is None:
        raise UnknownComputer(f"uid {caller_uid} is not mapped to any computer",
                              f"an admin adds it with `smpfs computer add NAME --uid {caller_uid}`")
    if computer and computer.lower() != mine["name"].lower():
        raise PermissionDenied(f"uid {caller_uid} is computer {mine['name']} and cannot act for {computer}")
    return mine


# -- secrets --------------------------------------------------------------------

def secret(smp, caller_uid: int, name: str, rotate: bool = False) -> dict:
    """The computer's secret (root only, audited); ``rotate`` makes a new one first
    (the old one stops working at once; a computer from before secrets gets one)."""
    c = get(smp, name)
    row = smp.query_one("SELECT secret_wrapped FROM computers WHERE name=?", (c["name"],))
    if rotate or row["secret_wrapped"] is None:
        value = secretmod.new_secret()
        with smp.tx():
            smp.conn.execute("UPDATE computers SET secret_wrapped=?, secret_verifier=?, secret_set_at=?"
                             " WHERE name=?", (secretmod.wrap_secret(smp.master_key(), c["name"], value),
                                               secretmod.make_verifier(value), time.time(), c["name"]))
        audit.record(smp, caller_uid, "computer_secret_rotate", computer=c["name"])
        return {"name": c["name"], "secret_value": value, "rotated": True}
    value = secretmod.unwrap_secret(smp.master_key(), c["name"], row["secret_wrapped"])
    audit.record(smp, caller_uid, "computer_secret_show", computer=c["name"])
    return {"name": c["name"], "secret_value": value, "rotated": False}


def authenticate(smp, name: str, secret_value: str) -> dict:
    """The computer ``name`` if ``secret_value`` is its secret; else PermissionDenied,
    audited (with whatever ``smp.audit_context`` says, e.g. the client's address).
    An unknown name and a wrong secret are refused alike."""
    row = None
    if _NAME.fullmatch(name or ""):
        row = smp.query_one("SELECT name, uid, secret_verifier FROM computers WHERE name=?", (name,))
    ok = secretmod.check_verifier(row["secret_verifier"] if row else None, secret_value or "")
    if not ok:
        err = PermissionDenied(f"wrong computer name or secret for {shown(name)}",
                               "check --computer and --secret-file (an admin shows the secret with "
                               "`smpfs computer secret NAME`)")
        # the name is the caller's text: stored only if it is a valid name
        audit.record_failure(smp, None, "authenticate", err, computer=name if valid_name(name) else None)
        raise err
    return {"name": row["name"], "uid": row["uid"]}


def smb_accounts(smp) -> list[dict]:
    """Every computer with a secret: name, uid and NT hash, for Samba's passdb.
    Only the network layer calls this, to write its root-only passdb."""
    out = []
    for r in smp.query("SELECT name, uid, secret_wrapped FROM computers WHERE secret_wrapped IS NOT NULL"
                       " ORDER BY name"):
        value = secretmod.unwrap_secret(smp.master_key(), r["name"], r["secret_wrapped"])
        out.append({"name": r["name"], "uid": r["uid"], "nt_hash": secretmod.nt_hash(value)})
    return out


def import_rows(smp, text: str, uid: int = 0) -> dict:
    """Create computers (and associations) from CSV ``name,uid[,destination]``, in one
    transaction: any bad row refuses the whole file, naming its line.

    Blank lines and lines starting with ``#`` are skipped, and so is a first row
    ``name,uid,...``. A destination is a computer already known or one named in
    the file; the row's computer becomes its source (side-by-side), or in-place
    when the destination is the computer itself."""
    import csv
    import io

    from . import association
    rows, names, uids = [], {}, {}
    for lineno, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if not rows and not names and fields[0].lower() == "name":
            continue
        where = f"line {lineno}"
        if len(fields) not in (2, 3):
            raise UsageError(f"{where}: expected name,uid[,destination], got {len(fields)} field(s)",
                             "one computer per line: PC-0042,2042 or PC-0042,2042,PC-NEW")
        name, uid_text, dest = fields[0], fields[1], (fields[2] if len(fields) == 3 else "")
        if not _NAME.fullmatch(name):
            raise UsageError(f"{where}: invalid computer name {name!r}",
                             "use letters, digits, '.', '-', '_' (at most 63), e.g. PC-0042")
        try:
            cuid = parse_uid(uid_text)
        except UsageError as e:
            raise UsageError(f"{where}: {e.message}", e.hint)
        if cuid == 0:
            raise UsageError(f"{where}: a computer cannot run as root (uid 0)")
        if name.lower() in names:
            raise Conflict(f"{where}: computer {name} is also on line {names[name.lower()]}")
        if cuid in uids:
            raise Conflict(f"{where}: uid {cuid} is also on line {uids[cuid]}")
        if (c := get(smp, name, missing_ok=True)) is not None:
            raise Conflict(f"{where}: computer {c['name']} already exists (uid {c['uid']})")
        if (c := by_uid(smp, cuid)) is not None:
            raise Conflict(f"{where}: uid {cuid} is already computer {c['name']}")
        names[name.lower()], uids[cuid] = lineno, lineno
        rows.append((lineno, name, cuid, dest))
    for lineno, _name, _, dest in rows:
        if dest and dest.lower() not in names and get(smp, dest, missing_ok=True) is None:
            raise UnknownComputer(f"line {lineno}: destination {dest!r} is neither known nor in the file",
                                  "add it first, or put it on a line of its own")
    if not rows:
        raise UsageError("the file names no computer", "one computer per line: name,uid[,destination]")
    with smp.tx():
        for _, name, cuid, _ in rows:
            _insert(smp, name, cuid)
        made = [association.associate(smp, name, dest, uid=uid) for _, name, _, dest in rows if dest]
        audit.record(smp, uid, "computer_import", computers=len(rows), associations=len(made))
    return {"computers": [{"name": n, "uid": u} for _, n, u, _ in rows],
            "associations": [{"source": a["source"], "dest": a["dest"], "migration_type": a["migration_type"]}
                             for a in made]}
