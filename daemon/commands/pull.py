"""`moed pull REPO_ID [--revision R] [--name NAME] [--bits N] [--dtype T] [--force]`: fetch and convert a model.

Downloads an mlx-lm or Hugging Face MoE checkpoint with huggingface_hub (into the Hugging Face cache: resumable,
with progress bars, honouring HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT and HF_TOKEN or a `hf auth login` token), then
converts it into moed's data folder as `<data>/stores/ORG--NAME` (see `moed list`). Afterwards the name serves it:
`moed serve ORG/NAME`. Only the files a conversion reads are fetched (config, tokenizer, safetensors).
The conversion options are `moed convert`'s.
"""

from __future__ import annotations

import argparse
import sys

ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "tokenizer*"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="fetch a model from the Hugging Face hub and convert it into a store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo_id", help="ORG/NAME on the Hugging Face hub")
    p.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    p.add_argument("--name", default=None, help="store name (default: ORG--NAME)")
    p.add_argument("--bits", type=int, default=None, help="as `moed convert --bits`")
    p.add_argument("--group-size", type=int, default=None, help="as `moed convert --group-size`")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="as `moed convert --dtype`")
    p.add_argument("--force", action="store_true", help="replace a store of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def fetch(repo_id: str, revision: str, quiet: bool = False) -> str:
    """The local folder of `repo_id` at `revision` in the Hugging Face cache, downloading what is missing.

    Raises:
        StoreError: the repo or revision does not exist, needs a token, or the hub cannot be reached (offline).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf

    from ..store.format import StoreError

    try:
        return str(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW,
                                     tqdm_class=_silent() if quiet else None))
    except hf.GatedRepoError as e:
        raise StoreError(f"{repo_id} is gated: accept its terms on the hub, then log in (`hf auth login`) or "
                         f"set HF_TOKEN") from e
    except hf.RepositoryNotFoundError as e:
        raise StoreError(f"no repository {repo_id} on the hub (or it is private: log in or set HF_TOKEN)") from e
    except hf.RevisionNotFoundError as e:
        raise StoreError(f"{repo_id} has no revision {revision!r}") from e
    except hf.LocalEntryNotFoundError as e:
        raise StoreError(f"{repo_id}@{revision} is not in the local Hugging Face cache and the hub cannot be "
                         f"reached (offline, or HF_HUB_OFFLINE=1): connect, or pull it where you can and copy "
                         f"the cache (HF_HOME)") from e
    except (hf.HfHubHTTPError, OSError) as e:
        raise StoreError(f"downloading {repo_id}: {e}") from e


def _silent() -> type:
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..store.convert import convert, source_is_quantized
    from ..store.format import StoreError
    from ..store.registry import store_name, stores_dir, write_origin

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    name = args.name or store_name(args.repo_id)
    if "/" in name or name.startswith("."):
        print(f"moed pull: --name {name!r} must be a plain folder name", file=sys.stderr)
        return 2
    dst = stores_dir() / name
    if dst.exists() and not args.force:
        print(f"moed pull: a store named {name} exists at {dst} (--force replaces it)", file=sys.stderr)
        return 2
    try:
        src = fetch(args.repo_id, args.revision, args.quiet)
        bits = args.bits
        if bits is None and args.group_size is None and not source_is_quantized(src):
            bits = 4
        convert(src, dst, bits=bits, group_size=args.group_size or 64, force=args.force, dtype=args.dtype,
                progress=None if args.quiet else progress)
    except StoreError as e:
        print(f"moed pull: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"moed pull: {e.filename or dst}: {e.strerror or e}", file=sys.stderr)
        return 1
    write_origin(dst, args.repo_id, args.revision, Path(src).name)
    if not args.quiet:
        print(f"pulled {args.repo_id} into {dst}; serve it with `moed serve {args.repo_id}`", file=sys.stderr)
    return 0
