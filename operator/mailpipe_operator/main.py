"""The `mailpipe-operator` command: run the EmailPipeline operator."""

from __future__ import annotations

import argparse
import logging

import kopf

DEFAULT_LIVENESS_PORT = 8080


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailpipe-operator", description="Reconcile EmailPipeline resources.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); needs only a namespaced Role there",
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (needs a ClusterRole)")
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=DEFAULT_LIVENESS_PORT,
        help=f"port of the /healthz endpoint for the liveness probe (default {DEFAULT_LIVENESS_PORT}); 0 disables it",
    )
    parser.add_argument("--verbose", action="store_true", help="log at debug level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.INFO)
    # Importing the module registers its handlers with kopf.
    import mailpipe_operator.handlers  # noqa: F401

    namespaces: list[str] = arguments.namespace
    liveness = f"http://0.0.0.0:{arguments.liveness_port}/healthz" if arguments.liveness_port else None
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
