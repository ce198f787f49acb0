"""``mmrec forget``: delete users' rows from a store and keep them out of later runs (:mod:`mmrec.forget`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (EXIT_OK, EXIT_USAGE, JSON_HELP, TABLE_FORMATS, add_id_key_argument, fail, print_json_last,
                      require_file, require_store)

__all__ = ["add_forget_arguments", "forget_command"]


def add_forget_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="store folder")
    parser.add_argument("--user", action="append", default=[], metavar="USER_ID",
                        help="a user id to forget (repeat the option for more users)")
    parser.add_argument("--users-file", type=Path, default=None,
                        help=f"user ids to forget: a {TABLE_FORMATS} file with a user_id column, or any other "
                             "text file with one id a line")
    add_id_key_argument(parser)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def forget_command(args: argparse.Namespace) -> int:
    from ..forget import forget_users, read_users_file
    from ..io.values import id_string
    from ..store import Store

    if not args.user and args.users_file is None:
        return fail(args, "give --user USER_ID (repeatable), --users-file FILE, or both", EXIT_USAGE)
    require_store(args.store)
    require_file("--users-file", args.users_file)
    ids = [id_string(user, "--user") for user in args.user]
    if args.users_file is not None:
        ids += read_users_file(args.users_file)
    with Store(args.store, create=False) as store:
        report = forget_users(store, ids, id_key=args.id_key)
    for user in report["users"]:
        if user["forgotten"]:
            print(f"user {user['user_id']}: deleted {user['events']} events, {user['states']} stored state(s), "
                  f"{user['texts']} cached event texts")
        else:
            print(f"user {user['user_id']}: not in the store (nothing to delete; recorded as forgotten)")
    print(f"forgot {report['forgotten']} of {len(report['users'])} users ({report['events']} events, "
          f"{report['states']} states, {report['texts']} cached texts); {report['tombstones']} recorded as forgotten; "
          f"store file rebuilt and its WAL emptied in {report['seconds']:.1f} s")
    if args.json:
        print_json_last(report)
    return EXIT_OK
