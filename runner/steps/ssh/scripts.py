"""The shell scripts signoff runs on a host: the job wrapper, and the kill and claim of a job.

Each is a small POSIX-sh script, built here as text (no I/O):

- `run_script` / `detach_script`: `export` the env with shlex-quoted values
  (no AcceptEnv needed) and run the command in a session of its own
  (`setsid`) from a job directory `$HOME/.signoff/jobs/<name>` holding its
  `pid` (= its process group), `exit_code`, `output` ($SIGNOFF_OUTPUT) and,
  when detached, its `log`.
- `kill_script`: the job's whole process group gets SIGTERM, then SIGKILL
  (closing a channel kills nothing on the host). A kill that wins the race
  against the start leaves a marker that stops the job from starting at all.
- `claim_script`: a detached job's pid after a restart (or a fence for one
  that has not started), for a retry to adopt it.

The host needs a POSIX /bin/sh and util-linux `setsid` (with `-w`); bash is
used for the command when present, `ps` and `awk` (if there) let a kill see
that only zombies are left instead of waiting out the grace period.
"""

from __future__ import annotations

import shlex

JOBS = ".signoff/jobs"            # under the remote user's $HOME
KILL_GRACE = 2.0                  # SIGTERM, then this long, then SIGKILL
START_WAIT = 5.0                  # a detached job must have written its pid by then
SETUP_FAILED = 125                # the wrapper's own exit code (job dir, cwd)

# The job itself: $0 is the job dir, $1 the command. It is the leader of its own
# session and process group (setsid), so its pid is the group to kill.
_INNER = ('echo $$ > "$0/pid"; '
          'if command -v bash >/dev/null 2>&1; then bash -c "$1"; else sh -c "$1"; fi; '
          's=$?; echo $s > "$0/exit_code"; exit $s')


def _make_dir(dir_expr: str) -> str:
    return (f'd={dir_expr}\n'
            f'if ! (umask 077 && mkdir -p "$(dirname "$d")" && mkdir "$d") 2>/dev/null; then\n'
            f'  [ -e "$d/cancelled" ] && rm -rf "$d"\n'
            f'  echo "signoff: cannot create the job directory $d on the host" >&2; exit {SETUP_FAILED}\n'
            f'fi\n')


def _cd(cwd: str | None) -> str:
    if not cwd:
        return ""
    return (f'cd {_shell_path(cwd)} || {{ rm -rf "$d"; echo "signoff: cannot change to directory" {shlex.quote(cwd)} '
            f'"on the host" >&2; exit {SETUP_FAILED}; }}\n')


def _shell_path(path: str) -> str:
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def job_dir(name: str) -> str:
    """The job directory of job `name`, as a shell word (`name` is quoted by the caller if it must be)."""
    return f'"$HOME"/{JOBS}/{name}'


def run_script(job: str, command: str, cwd: str | None, env: dict[str, str]) -> str:
    """Run `command` as job `job` and wait for it; its output is the script's."""
    return (_make_dir(job_dir(job)) + _cd(cwd) + _exports(env) + 'export SIGNOFF_OUTPUT="$d/output"\n'
            f'setsid -w /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(command)} < /dev/null\n')


def detach_script(job: str, command: str, cwd: str | None, env: dict[str, str]) -> str:
    """Start `command` as job `job` in the background; prints `pid=` and `job=` (its directory) once it runs."""
    tries = int(START_WAIT / 0.05)
    return (_make_dir(job_dir(job)) + _cd(cwd) + _exports(env) +
            f'setsid nohup /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(command)} '
            '> "$d/log" 2>&1 < /dev/null &\n'
            'i=0\n'
            'while [ ! -s "$d/pid" ]; do\n'
            f'  i=$((i+1)); if [ $i -gt {tries} ]; then echo "signoff: the job did not start" >&2; '
            f'exit {SETUP_FAILED}; fi\n'
            '  sleep 0.05\n'
            'done\n'
            'printf "pid=%s\\njob=%s\\n" "$(cat "$d/pid")" "$d"\n')


# a group is alive while it has a member that is not a zombie (orphans wait for init to reap them)
_ALIVE = ('alive() {\n'
          '  kill -s 0 -- "-$1" 2>/dev/null || return 1\n'
          '  command -v ps >/dev/null 2>&1 || return 0\n'
          '  ps -A -o pgid= -o stat= 2>/dev/null | awk -v g="$1" \'$1 == g && $2 !~ /^Z/ {n++} END {exit !n}\'\n'
          '}\n')
# a job being started writes its pid at once: give it a few seconds
_WAIT_PID = ('i=0\n'
             'while [ ! -s "$d/pid" ] && [ ! -e "$d/exit_code" ] && [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done\n')
# a job that has not started yet (no directory): make sure it never does
_FENCE = ('if [ ! -d "$d" ]; then\n'
          '  (umask 077 && mkdir -p "$(dirname "$d")" && mkdir "$d" && : > "$d/cancelled") 2>/dev/null\n'
          '  echo not-started; exit 0\n'
          'fi\n')


def kill_script(dir_expr: str, *, remove: bool) -> str:
    """Kill the job in `dir_expr`; prints what happened (killed, terminated, gone, ended or not-started)."""
    steps = int(KILL_GRACE * 10)
    return (f'd={dir_expr}\n' + _FENCE + _ALIVE + _WAIT_PID +
            'if [ -e "$d/exit_code" ] || [ ! -s "$d/pid" ]; then r=ended\n'
            'else\n'
            '  p=$(cat "$d/pid")\n'
            '  if alive "$p"; then\n'
            '    kill -s TERM -- "-$p" 2>/dev/null\n'
            f'    i=0; while alive "$p" && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done\n'
            '    if alive "$p"; then r=killed; else r=terminated; fi\n'
            '    kill -s KILL -- "-$p" 2>/dev/null\n'
            '  else r=gone; fi\n'
            'fi\n'
            + ('rm -rf "$d"\n' if remove else ': > "$d/killed" 2>/dev/null\n') +
            'echo "$r"\n')


def claim_script(dir_expr: str) -> str:
    """Print a started job's `pid=` and `job=`, or fence one that has not started and print not-started."""
    return (f'd={dir_expr}\n' + _FENCE + _WAIT_PID +
            'if [ -s "$d/pid" ]; then printf "pid=%s\\njob=%s\\n" "$(cat "$d/pid")" "$d"; exit 0; fi\n'
            ': > "$d/cancelled"\n'
            'echo not-started\n')
