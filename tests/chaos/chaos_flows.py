"""The flows the chaos test drives, written for one test root.

Every shell step appends `<run> <step> <attempt>` to the side-effect file (outside the data dir)
before it does anything else, so the file shows how often each attempt really ran. The shell step
gets SIGNOFF_RUN_ID and SIGNOFF_STEP; no variable or expression names the attempt (a step's own
`steps.<id>` is refused as a self-reference), so the attempt is read from the step's work folder,
`.../work/<step>-<attempt>/`, where `$SIGNOFF_OUTPUT` lives (SIGNOFF_ATTEMPT wins if a build sets it).

A gated step waits (at most 20 s, so nothing outlives the test) until the test creates
`gates/<run id>`: the test knows the run is still in that step while it sends early requests.
"""

from __future__ import annotations

from pathlib import Path

WAIT_TIMEOUT = "3s"  # approvals and callbacks: short, so runs end by themselves


def _side_line(side: Path) -> str:
    return (f'n=$(dirname "$SIGNOFF_OUTPUT"); n=${{SIGNOFF_ATTEMPT:-${{n##*-}}}}\n'
            f"echo \"$SIGNOFF_RUN_ID $SIGNOFF_STEP $n\" >> '{side}'\n")


def _gate(gates: Path) -> str:
    return (f"g='{gates}'/\"$SIGNOFF_RUN_ID\"; i=0\n"
            "while [ ! -e \"$g\" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\n")


def _block(text: str, indent: int = 6) -> str:
    pad = " " * indent
    return "".join(pad + line + "\n" for line in text.splitlines())


def chaos_flows(side: Path, gates: Path) -> dict[str, str]:
    """name -> flow YAML."""
    line, gate = _side_line(side), _gate(gates)
    return {
        "chaos-work": f"""name: chaos-work
steps:
  - id: first
    kind: shell
    timeout: 20s
    retry: {{attempts: 3, backoff: 100ms}}
    run: |
{_block(line + "sleep 0.3")}
  - id: flaky
    kind: shell
    timeout: 20s
    retry: {{attempts: 3, backoff: 100ms}}
    run: |
{_block(line + '[ "$n" -ge 2 ]')}
  - id: nap
    kind: wait
    duration: 1s
  - id: last
    kind: shell
    timeout: 20s
    run: |
{_block(line)}
""",
        "chaos-review": f"""name: chaos-review
steps:
  - id: prep
    kind: shell
    timeout: 30s
    retry: {{attempts: 8, backoff: 100ms}}
    run: |
{_block(line + gate)}
  - id: review
    kind: approval
    approvers: [bob, carol]
    context: Apply the change of run ${{{{ run.id }}}}
    timeout: {WAIT_TIMEOUT}
    on_timeout: fail
  - id: apply
    kind: shell
    timeout: 20s
    retry: {{attempts: 2, backoff: 100ms}}
    run: |
{_block(line)}
""",
        "chaos-callback": f"""name: chaos-callback
steps:
  - id: prep
    kind: shell
    timeout: 30s
    retry: {{attempts: 8, backoff: 100ms}}
    run: |
{_block(line + gate)}
  - id: done
    kind: callback
    schema:
      type: object
      required: [nonce]
      properties:
        nonce: {{type: string}}
    timeout: {WAIT_TIMEOUT}
    on_timeout: fail
  - id: use
    kind: shell
    timeout: 20s
    retry: {{attempts: 2, backoff: 100ms}}
    run: |
{_block(line + "echo ${{ steps.done.outputs.payload.nonce }}")}
""",
        "chaos-queue": f"""name: chaos-queue
concurrency: 1
steps:
  - id: work
    kind: shell
    timeout: 20s
    retry: {{attempts: 3, backoff: 100ms}}
    run: |
{_block(line + "sleep 0.2")}
  - id: nap
    kind: wait
    duration: 500ms
""",
    }


# (flow, shell step) -> the attempts its retry policy allows
SHELL_ATTEMPTS = {
    ("chaos-work", "first"): 3, ("chaos-work", "flaky"): 3, ("chaos-work", "last"): 1,
    ("chaos-review", "prep"): 8, ("chaos-review", "apply"): 2,
    ("chaos-callback", "prep"): 8, ("chaos-callback", "use"): 2,
    ("chaos-queue", "work"): 3,
}
