"""`ssmc import hf` and `ssmc export hf`: transformers / mamba-ssm checkpoints <-> ssmc.

    ssmc import hf CONFIG_OR_DIR -o SPEC.yaml [--weights OUT] [--checkpoint FILE]
        writes the ssmc spec of a transformers config.json (model_type mamba / mamba2) or a
        mamba-ssm config; with --weights, also the checkpoint's tensors under ssmc's names
        (OUT.safetensors or a torch file), ready for
        `ssmc.compile(SPEC).load_state_dict(load(OUT))`.
    ssmc export hf CONFIG_OR_DIR --weights SSMC_WEIGHTS -o OUT [--flavor hf|mamba_ssm]
        the way back: ssmc-named weights -> a transformers (or mamba-ssm) state dict.
"""

from __future__ import annotations

from pathlib import Path

from ssmc.errors import SsmcError


def cmd_import_hf(args) -> int:
    from ssmc.hf import convert
    from ssmc.ir.spec import load_spec

    mc = convert.model_config(args.config)
    spec = convert.spec_from_config(mc)
    load_spec(spec)  # the spec we write must verify: a failure here is ours, not the user's
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(spec)
    kind = "Mamba-2" if mc.kind == "mamba2" else "Mamba"
    src = "transformers" if mc.flavor == "hf" else "mamba-ssm"
    print(f"wrote {out}: {kind} from a {src} config, {mc.n_layers} layers, d_model {mc.d_model}, "
          f"vocab {mc.vocab}")
    if args.weights:
        ckpt = Path(args.checkpoint) if args.checkpoint else None
        if ckpt is None:
            src_dir = Path(args.config)
            ckpt = convert.find_weights(src_dir) if src_dir.is_dir() else None
            if ckpt is None:
                raise SsmcError(f"--weights: no checkpoint next to {args.config} (looked for "
                                f"{', '.join(convert.WEIGHT_FILES)}); pass --checkpoint FILE")
        sd = convert.to_ssmc_state_dict(convert.load_state_dict(ckpt), mc)
        convert.save_state_dict(sd, args.weights)
        print(f"wrote {args.weights}: {len(sd)} tensors from {ckpt} under ssmc's names")
    return 0


def cmd_export_hf(args) -> int:
    from ssmc.hf import convert

    mc = convert.model_config(args.config)
    sd = convert.from_ssmc_state_dict(convert.load_state_dict(args.weights), mc,
                                      flavor=args.flavor)
    convert.save_state_dict(sd, args.output)
    print(f"wrote {args.output}: {len(sd)} tensors under "
          f"{'transformers' if (args.flavor or mc.flavor) == 'hf' else 'mamba-ssm'} names")
    return 0


def register(subparsers) -> None:
    """Add `ssmc import hf` and `ssmc export hf` to the CLI."""
    parser_class = subparsers._parser_class  # ssmc's parser: usage errors exit 2
    imp = subparsers.add_parser("import", help="import a model from another framework (hf: "
                                                "transformers / mamba-ssm Mamba, Mamba-2)")
    isub = imp.add_subparsers(dest="source", parser_class=parser_class, metavar="SOURCE")
    isub.required = True
    h = isub.add_parser("hf", help="spec (and weights) from a transformers or mamba-ssm "
                                   "config.json / checkpoint directory")
    h.add_argument("config", metavar="CONFIG_OR_DIR",
                   help="config.json, or a directory holding config.json and the checkpoint")
    h.add_argument("-o", "--output", required=True, metavar="SPEC.yaml")
    h.add_argument("--weights", metavar="OUT",
                   help="also convert the checkpoint's tensors to ssmc's names and write them "
                        "here (.safetensors, else a torch file)")
    h.add_argument("--checkpoint", metavar="FILE",
                   help="the checkpoint to convert (default: the one in CONFIG_OR_DIR)")
    h.set_defaults(fn=cmd_import_hf)

    exp = subparsers.add_parser("export", help="export ssmc weights to another framework's names")
    esub = exp.add_subparsers(dest="target_format", parser_class=parser_class, metavar="FORMAT")
    esub.required = True
    e = esub.add_parser("hf", help="ssmc-named weights -> a transformers / mamba-ssm state dict")
    e.add_argument("config", metavar="CONFIG_OR_DIR")
    e.add_argument("--weights", required=True, metavar="SSMC_WEIGHTS")
    e.add_argument("-o", "--output", required=True, metavar="OUT")
    e.add_argument("--flavor", choices=("hf", "mamba_ssm"), default=None,
                   help="name style to write (default: the config's own)")
    e.set_defaults(fn=cmd_export_hf)
