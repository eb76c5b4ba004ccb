"""`errands titles DOMAIN...` prints each title, and says clearly what is wrong with bad input."""

import asyncio
import json
import os
import sys

from tests.fixtures.targets import TargetServer

HTML = "text/html; charset=utf-8"


async def run_cli(*args: str, allow_private: bool = True) -> tuple[int, str, str]:
    env = {**os.environ, "ERRANDS_ALLOW_PRIVATE_TARGETS": str(allow_private).lower()}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "errands",
        "titles",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_prints_one_title_per_domain(target_server: TargetServer) -> None:
    first = target_server.route("/one", body=b"<title>First page</title>", content_type=HTML)
    second = target_server.route("/two", body=b"<p>untitled</p>", content_type=HTML)

    code, out, _ = await run_cli(first, second)

    assert code == 0
    assert out.splitlines() == [f"{first}\tFirst page", f"{second}\t[no_title]"]


async def test_json_output_and_failure_exit_code(target_server: TargetServer) -> None:
    url = target_server.route("/x", body=b"<title>Guarded</title>", content_type=HTML)

    code, out, _ = await run_cli("--json", url, allow_private=False)

    assert code == 1
    result = json.loads(out)["results"][0]
    assert (result["status"], result["title"]) == ("error", None)
    assert "refused" in result["error"]
    assert target_server.hits["/x"] == 0


async def test_bad_domain_is_named() -> None:
    code, _, err = await run_cli("example.com", "not a domain")

    assert code == 2
    assert "domains[1] 'not a domain'" in err
