"""The `pgolf` command: the same library calls that back the stage scripts, for use outside DVC.

Commands are a table: name -> (module, function that adds its subparser). Each adder registers
`func` on its parser; `main` dispatches and maps PgolfError to exit 1, bad params to exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from pgolf.errors import ParamsError, PgolfError

COMMANDS: dict[str, tuple[str, str]] = {
    "params": ("pgolf.cli", "add_params_command"),
    "profile": ("pgolf.cli", "add_profile_command"),
    "plots": ("pgolf.cli", "add_plots_command"),
    "eval": ("pgolf.eval.cli", "add_eval_command"),
    "inspect": ("pgolf.pack.cli", "add_inspect_command"),
    "unpack": ("pgolf.pack.cli", "add_unpack_command"),
    "train": ("pgolf.train.stage", "add_train_command"),
    "summary": ("pgolf.summary", "add_summary_command"),
    "exp": ("pgolf.exptable", "add_exp_command"),
    "ablate": ("pgolf.ablate", "add_ablate_command"),
    "rd": ("pgolf.rd", "add_rd_command"),
    "plan": ("pgolf.plan", "add_plan_command"),
    "provenance": ("pgolf.provenance", "add_provenance_command"),
    "submission": ("pgolf.submission.cli", "add_submission_command"),
}


def _params_check(args: argparse.Namespace) -> int:
    from pgolf.config.sections import load_params

    sections = load_params(args.params, require_all=True)
    if args.stamp:
        from pgolf.io import write_bytes_atomic

        # Constant bytes: stages downstream of the stamp never rerun because of it.
        write_bytes_atomic(args.stamp, b"params.yaml validated by pgolf params check\n")
    print(f"{args.params}: ok ({len(sections)} sections: {', '.join(sections)})")
    return 0


def _params_show(args: argparse.Namespace) -> int:
    import yaml

    from pgolf.config.sections import load_params

    sections = load_params(args.params)
    names = [args.section] if args.section else list(sections)
    for name in names:
        if name not in sections:
            raise ParamsError(f"{name}: no such params section (known: {', '.join(sections)})")
    resolved = {name: sections[name].model_dump(mode="json") for name in names}
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        print(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False), end="")
    return 0


def add_params_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("params", help="validate or show params.yaml")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate every section; exit 2 naming each bad key")
    check.add_argument("--stamp", help="on success, write a constant stamp file here (the DVC `params` stage)")
    check.set_defaults(func=_params_check)
    show = actions.add_parser("show", help="print the resolved values, defaults included")
    show.add_argument("section", nargs="?", help="only this section")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_params_show)
    for p in (check, show):
        p.add_argument("--params", default="params.yaml", help="path of the params file (default: params.yaml)")


def _profile_list(args: argparse.Namespace) -> int:
    from pgolf.profiles import list_profiles

    for profile in list_profiles(args.dir):
        print(f"{profile.name}: {profile.description}")
    return 0


def _profile_show(args: argparse.Namespace) -> int:
    import yaml

    from pgolf.profiles import load_profile

    profile = load_profile(args.name, args.dir)
    print(f"# {profile.path}: {profile.description}")
    # Plain values (the profile is read with yaml.safe_load); leaf lists and maps stay inline.
    print(yaml.safe_dump(profile.overrides, sort_keys=False, default_flow_style=None, width=100), end="")
    return 0


def _profile_apply(args: argparse.Namespace) -> int:
    from pgolf.profiles import apply_profile

    profile, changed = apply_profile(args.name, args.params, args.dir)
    if changed:
        print(f"{args.params}: applied profile {profile.name} ({profile.path}): {len(changed)} values changed")
    else:
        print(f"{args.params}: profile {profile.name} ({profile.path}) already applied: nothing changed")
    return 0


def add_profile_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="list, show or apply a params profile from profiles/")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the available profiles with their descriptions")
    listing.set_defaults(func=_profile_list)
    show = actions.add_parser("show", help="the overrides a profile makes")
    show.add_argument("name")
    show.set_defaults(func=_profile_show)
    apply = actions.add_parser("apply", help="merge a profile into params.yaml (validated first; only changed lines are rewritten)")
    apply.add_argument("name")
    apply.add_argument("--params", default="params.yaml", help="params file to rewrite (default: params.yaml)")
    apply.set_defaults(func=_profile_apply)
    for p in (listing, show, apply):
        p.add_argument("--dir", default="profiles", help="profiles directory (default: profiles)")


def _plots_template(args: argparse.Namespace) -> int:
    from pgolf.plots import write_offline_template

    path = write_offline_template(args.out)
    print(f"{path}: offline template for `dvc plots show` ({path.stat().st_size} bytes)")
    return 0


def add_plots_command(sub: argparse._SubParsersAction) -> None:
    from pgolf.plots import DVC_TEMPLATE_PATH

    parser = sub.add_parser("plots", help="offline plotting support")
    actions = parser.add_subparsers(dest="action", required=True)
    template = actions.add_parser("template", help="write the offline HTML template that .dvc/config points at")
    template.add_argument("--out", default=str(DVC_TEMPLATE_PATH), help=f"output path (default: {DVC_TEMPLATE_PATH})")
    template.set_defaults(func=_plots_template)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf pipeline tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, adder in COMMANDS.values():
        getattr(importlib.import_module(module_name), adder)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ParamsError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except PgolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `pgolf inspect ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
