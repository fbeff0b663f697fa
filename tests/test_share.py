"""The shared run store, with real components: two workspaces (METU and KITIG, each with its own
signing key) and one store — a shared folder, and an S3-compatible server (moto) on 127.0.0.1
through s3fs. What A pushes, B's batch restores without executing anything; a changed file or an
unknown signer is refused and the run executed; killed and concurrent pushes leave only whole runs."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import RK, build_report_workspace, make_template, run_rk, stop_process_group

PROBE = (
    "import os\nimport research_kit as rk\npeople = rk.load('mini', 'people')\n"
    "rk.record('n', n)\nrk.record('n_people', len(people))\nrk.record('mean_age', float(people.age.mean()))\n"
    "marker = os.environ.get('SHARE_TEST_MARKER')\n"
    "if marker: open(marker, 'a').write(f'probe n={n}\\n')  # proves this run was executed here"
)
BATCHES = (
    "shared:\n  - report: probe\n    grid: {n: [1, 2, 3]}\n  - report: other\n    parameters: [{k: 5}]\n"
    "flaky:\n  - report: flaky\n    parameters: [{n: 1}, {n: 2}]\n"
)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# ---- the store: a folder, or moto's S3 server on a free loopback port ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's standalone S3 server on 127.0.0.1, owned by this module: started here, stopped here."""
    port = _free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc, grace=10)


def s3(endpoint):
    import s3fs

    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=endpoint,
        skip_instance_cache=True,
        use_listings_cache=False,
    )


BOTH_STORES = pytest.mark.parametrize("store", ["folder", "s3"], indirect=True)


@pytest.fixture
def store(request, tmp_path):
    """(share URL, env for rk, an fsspec file system and root to inspect the store with): a folder unless the test asks for s3."""
    if getattr(request, "param", "folder") == "folder":
        import fsspec

        folder = tmp_path / "shared-drive" / "runs-store"
        folder.mkdir(parents=True)
        return str(folder), {}, fsspec.filesystem("file"), str(folder)
    endpoint = request.getfixturevalue("moto_endpoint")
    fs = s3(endpoint)
    bucket = f"consortium-{random.randrange(10**9)}"
    fs.mkdir(bucket)
    return f"s3://{bucket}/share", {**S3_ENV, "FSSPEC_S3_ENDPOINT_URL": endpoint}, fs, f"{bucket}/share"


# ---- two workspaces with different institutions and keys ----


def _configure(root: Path, institution: str, share: str, key: Path, extra: str = ""):
    (root / "settings.ini").write_text(
        f"[workspace]\ndata = datasets\ncache = .cache\ninstitution = {institution}\n"
        f"share = {share}\nsigning_key = {key}\n{extra}"
    )


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """Built once per module, copied by each test: workspace A (METU) after running the `shared`
    batch, B (KITIG) before running anything, each with its own signing key and both public keys.
    Running the batch and making keys in every test made this module the slowest of the suite."""
    top = tmp_path_factory.mktemp("share-origin")
    a, _, env = build_report_workspace(top / "a")
    make_template(a / "reports" / "probe.ipynb", "n: int = 1", PROBE)
    (a / "reports" / "batches.yaml").write_text(BATCHES)
    b = top / "b"
    shutil.copytree(a, b)
    keys = {"METU": top / "home-a" / "METU.key", "KITIG": top / "home-b" / "KITIG.key"}
    for ws, institution in ((a, "METU"), (b, "KITIG")):
        _configure(ws, institution, "", keys[institution])
        run_rk("keys", "new", cwd=ws, env=env, check=0)
    shutil.copy(a / "keys" / "METU.pub", b / "keys")
    shutil.copy(b / "keys" / "KITIG.pub", a / "keys")
    run_rk("batch", "shared", cwd=a, env=env, check=0)
    return a, b, env, keys


@pytest.fixture
def pair(origin, store, tmp_path):
    """Copies of workspaces A (METU, its `shared` batch already run) and B (KITIG) on one store."""
    a0, b0, env, keys = origin
    a, b = tmp_path / "metu", tmp_path / "kitig"
    shutil.copytree(a0, a, symlinks=True)
    shutil.copytree(b0, b, symlinks=True)
    share, store_env, fs, root = store
    _configure(a, "METU", share, keys["METU"])
    _configure(b, "KITIG", share, keys["KITIG"])
    return a, b, {**env, **store_env}, fs, root


def manifests(build: Path) -> dict:
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in build.glob("*/*/manifest.json")
    }


def whole_runs(fs, root) -> dict:
    """Every run the store shows (one with a manifest): each must verify and every file match its hash."""
    import hashlib

    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    runs = {}
    for path in fs.glob(f"{root}/runs/*/*/manifest.json"):
        folder = path.rsplit("/", 1)[0]
        m = json.loads(fs.cat_file(path))["payload"]["manifest"]
        for name, digest in m["outputs"].items():
            assert hashlib.sha256(fs.cat_file(f"{folder}/files/{digest}/{name}")).hexdigest() == digest, (
                f"{folder}: {name}"
            )
        assert folder.endswith(m["cache_key"])
        runs[folder] = m
    return runs


@BOTH_STORES
def test_b_restores_every_run_a_pushed_without_executing_one(pair, tmp_path):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", cwd=a, env=env, check=0)
    pushed = run_rk("push", "--batch", "shared", cwd=a, env=env, check=0)
    assert "4 pushed, 0 already in the share, 0 skipped" in pushed.stdout
    assert len(whole_runs(fs, root)) == 4

    marker = tmp_path / "b-executed.txt"
    out = run_rk("batch", "shared", cwd=b, env={**env, "SHARE_TEST_MARKER": str(marker)}, check=0)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert out.stdout.count(f"restored from the share, run by METU on {today}") == 4, out.stdout
    assert not marker.exists(), "B executed a run the store held"
    assert "succeeded" not in out.stdout  # every row restored, none executed
    ma, mb = manifests(a / "reports" / "_build"), manifests(b / "reports" / "_build")
    assert ma.keys() == mb.keys() and len(ma) == 4
    for name in ma:
        assert mb[name]["records"] == ma[name]["records"] and mb[name]["cache_key"] == ma[name]["cache_key"]
        assert mb[name]["outputs"] == ma[name]["outputs"] and mb[name]["shared"]["institution"] == "METU"
    again = run_rk("batch", "shared", cwd=b, env={**env, "SHARE_TEST_MARKER": str(marker)}, check=0)
    assert again.stdout.count("cached") >= 4 and not marker.exists()
    # B pushing what it restored finds it there already
    assert "0 pushed, 4 already in the share" in run_rk("push", cwd=b, env=env, check=0).stdout


def test_no_share_runs_locally(pair, tmp_path):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", "--only", "probe/n=1", cwd=a, env=env, check=0)
    run_rk("push", cwd=a, env=env, check=0)
    marker = tmp_path / "b-executed.txt"
    out = run_rk(
        "batch",
        "shared",
        "--only",
        "probe/n=1",
        "--no-share",
        cwd=b,
        env={**env, "SHARE_TEST_MARKER": str(marker)},
        check=0,
    )
    assert "restored" not in out.stdout and marker.read_text() == "probe n=1\n"


@BOTH_STORES
def test_changed_output_is_refused_and_run_locally(pair, tmp_path, tally):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", "--only", "probe", cwd=a, env=env, check=0)
    run_rk("push", cwd=a, env=env, check=0)
    m = manifests(a / "reports" / "_build")["probe/n=2"]
    [folder] = [f for f, sm in whole_runs(fs, root).items() if sm["cache_key"] == m["cache_key"]]
    fs.pipe_file(f"{folder}/files/{m['outputs']['report.html']}/report.html", b"<p>n_people = 9999</p>")
    tally.faults += 1

    pulled = run_rk("pull", "--batch", "shared", cwd=b, env=env, check=1)
    assert "probe/n=2: refused the shared copy" in pulled.stderr
    assert "report.html does not match its sha256 in the signed manifest" in pulled.stderr
    assert not (b / "reports" / "_build" / "probe" / "n=2").exists()
    marker = tmp_path / "b-executed.txt"
    out = run_rk("batch", "shared", cwd=b, env={**env, "SHARE_TEST_MARKER": str(marker)}, check=0)
    assert "warning: probe/n=2: refused the shared copy" in out.stderr and "ran it here instead" in out.stderr
    assert marker.read_text() == "probe n=2\n"  # only the refused run was executed
    assert "n_people = 9999" not in (b / "reports" / "_build" / "probe" / "n=2" / "report.html").read_text()


def test_manifest_signed_by_an_unknown_key_is_refused(pair, tmp_path, tally):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", "--only", "other", cwd=a, env=env, check=0)
    (b / "keys" / "METU.pub").unlink()  # B does not know METU's key
    run_rk("push", a / "reports" / "_build" / "other" / "k=5", cwd=a, env=env, check=0)
    tally.bad_inputs += 1
    pulled = run_rk("pull", "--batch", "shared", cwd=b, env=env, check=1)
    assert "signed by 'METU', whose public key is not in" in pulled.stderr
    assert "error: 1 shared run refused" in pulled.stderr


def test_interrupted_pushes_leave_only_whole_runs(pair, tally):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", cwd=a, env=env, check=0)
    rng = random.Random(15)
    for _ in range(6):
        proc = subprocess.Popen(
            [str(RK), "push", "--batch", "shared"],
            cwd=a,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tally.faults += 1
        for m in whole_runs(fs, root).values():
            tally.runs_checked += 1
            assert m["status"] == "succeeded"
    run_rk("push", "--batch", "shared", cwd=a, env=env, check=0)
    assert len(whole_runs(fs, root)) == 4
    out = run_rk("pull", "--batch", "shared", cwd=b, env=env, check=0)
    assert "4 restored" in out.stdout


@BOTH_STORES
def test_concurrent_pushes_of_one_batch_leave_one_whole_copy_each(pair):
    a, b, env, fs, root = pair
    run_rk("batch", "shared", cwd=a, env=env, check=0)
    shutil.copytree(a / "reports" / "_build", b / "reports" / "_build")  # B ran the same batch
    run_rk("batch", "shared", "--no-share", cwd=b, env=env, check=0)
    procs = [
        subprocess.Popen(
            [str(RK), "push", "--batch", "shared"],
            cwd=ws,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for ws in (a, b)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = whole_runs(fs, root)
    assert sorted(m["cache_key"] for m in runs.values()) == sorted(
        m["cache_key"] for m in manifests(a / "reports" / "_build").values()
    )
    assert len(runs) == 4


# ---- who may push what ----


def restrict_people_to_metu(workspace: Path) -> None:
    "Mark the mini package's `people` as restricted to METU in `workspace`."
    import yaml

    descriptor = workspace / "datasets" / "mini" / "datapackage.yaml"
    d = yaml.safe_load(descriptor.read_text())
    next(r for r in d["resources"] if r["name"] == "people").update(
        {"x-access": "restricted", "x-owner": "METU"}
    )
    descriptor.write_text(yaml.safe_dump(d, sort_keys=False))


def test_run_reading_restricted_data_is_pushed_only_to_its_owners_store(pair, tally):
    a, b, env, fs, root = pair
    restrict_people_to_metu(a)
    run_rk("batch", "shared", cwd=a, env=env, check=0)
    out = run_rk("push", cwd=a, env=env, check=0)
    assert "1 pushed, 0 already in the share, 3 skipped" in out.stdout  # `other` reads nothing restricted
    assert "skipped probe/n=1: it read mini/people (restricted to METU)" in out.stderr
    assert "[workspace] share_owner" in out.stderr
    tally.bad_inputs += 1
    out = run_rk("push", cwd=a, env={**env, "RK_WORKSPACE_SHARE_OWNER": "METU"}, check=0)
    assert "3 pushed, 1 already in the share, 0 skipped" in out.stdout


def test_public_run_that_passed_the_audit_is_pushed_though_it_read_restricted_data(pair, tally):
    """The other way a run of restricted data may be shared: it is public and its disclosure audit passed."""
    a, b, env, fs, root = pair
    restrict_people_to_metu(a)
    make_template(
        a / "reports" / "headcount.ipynb",
        'audience: Literal["consortium", "public"] = "public"  # who may read it',
        "import research_kit as rk\nfrom research_kit.analysis.privacy import suppress_count\n"
        "people = rk.load('mini', 'people')\nrk.record('people', suppress_count(len(people), 10))",
    )
    for audience in ("public", "consortium"):
        run_rk("run", "headcount", "-p", f"audience={audience}", "--no-share", cwd=a, env=env, check=0)
    tally.bad_inputs += 1
    out = run_rk("push", cwd=a, env=env, check=0)
    assert "skipped headcount/audience=consortium: it read mini/people (restricted to METU)" in out.stderr, (
        out.stderr
    )
    assert "headcount/audience=public" not in out.stderr, out.stderr  # public and publishable: pushed


def test_failed_runs_are_not_pushed(pair):
    a, b, env, fs, root = pair
    run_rk("batch", "flaky", cwd=a, env=env, check=1)
    out = run_rk("push", "--batch", "flaky", cwd=a, env=env, check=0)
    assert (
        "1 pushed" in out.stdout
        and "skipped flaky/n=2: it failed: only successful runs are shared" in out.stderr
    )


# ---- mistakes: one line, exit 1 ----


@pytest.fixture(scope="module")
def one_run_origin(tmp_path_factory):
    """A METU workspace with one successful run, built once per module and copied by each test."""
    root, _, env = build_report_workspace(tmp_path_factory.mktemp("one-run") / "ws")
    run_rk("run", "other", "-p", "k=1", "--no-share", cwd=root, env=env, check=0)
    return root, env


@pytest.fixture
def one_run(one_run_origin, tmp_path):
    origin, env = one_run_origin
    root = tmp_path / "ws"
    shutil.copytree(origin, root, symlinks=True)
    (tmp_path / "store").mkdir()
    _configure(root, "METU", str(tmp_path / "store"), tmp_path / "home" / "METU.key")
    return root, env, tmp_path


@pytest.mark.parametrize(
    "case, env_add, expected",
    [
        (
            "bad url",
            {"RK_WORKSPACE_SHARE": "nosuch://bucket/runs"},
            "error: [workspace] share (RK_WORKSPACE_SHARE) = 'nosuch://bucket/runs' is not a usable fsspec URL",
        ),
        ("no share", {"RK_WORKSPACE_SHARE": ""}, "error: no shared run store: set [workspace] share"),
        ("no institution", {"RK_WORKSPACE_INSTITUTION": ""}, "error: [workspace] institution is not set"),
        ("missing key", {}, "error: no signing key at"),
    ],
)
def test_push_mistakes(one_run, tally, case, env_add, expected):
    root, env, tmp_path = one_run
    out = run_rk("push", cwd=root, env={**env, **env_add}, check=1)
    tally.bad_inputs += 1
    assert out.stderr.startswith(expected), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_push_of_a_folder_that_is_not_a_run(one_run, tally):
    root, env, tmp_path = one_run
    run_rk("keys", "new", cwd=root, env=env, check=0)
    out = run_rk("push", str(root / "reports"), cwd=root, env=env, check=1)
    tally.bad_inputs += 1
    assert "holds no manifest.json; give a run folder" in out.stderr
    out = run_rk("push", str(root / "reports"), "--batch", "small", cwd=root, env=env, check=1)
    assert "give a run folder or --batch NAME, not both" in out.stderr


def test_store_that_cannot_be_used_leaves_the_batch_to_run_locally(one_run, tally):
    root, env, tmp_path = one_run
    (tmp_path / "not-a-folder").write_text("a file where the store should be")
    out = run_rk(
        "run",
        "other",
        "-p",
        "k=2",
        cwd=root,
        env={**env, "RK_WORKSPACE_SHARE": str(tmp_path / "not-a-folder")},
        check=0,
    )
    tally.faults += 1
    assert "is not a folder (is the shared drive mounted?); running the rest locally" in out.stderr
    assert "succeeded" in out.stdout
    out = run_rk("pull", cwd=root, env={**env, "RK_WORKSPACE_SHARE": str(tmp_path / "missing")}, check=1)
    assert "missing is not a folder" in out.stderr


def test_keys_new_mistakes(one_run, tally):
    root, env, tmp_path = one_run
    run_rk("keys", "new", cwd=root, env=env, check=0)
    out = run_rk("keys", "new", cwd=root, env=env, check=1)
    assert "already exists; a key is never overwritten" in out.stderr
    out = run_rk(
        "keys",
        "new",
        cwd=root,
        env={**env, "RK_WORKSPACE_INSTITUTION": "ATK", "RK_WORKSPACE_SIGNING_KEY": str(root / "ATK.key")},
        check=1,
    )
    assert "is inside the workspace" in out.stderr and not (root / "ATK.key").exists()
    out = run_rk("keys", "new", cwd=root, env={**env, "RK_WORKSPACE_INSTITUTION": ""}, check=1)
    assert "[workspace] institution is not set" in out.stderr
    tally.bad_inputs += 3
    assert oct((tmp_path / "home" / "METU.key").stat().st_mode & 0o777) == "0o600"
    assert (root / "keys" / "METU.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


# ---- the consortium index, and the public site ----


def test_consortium_index_and_public_site(pair, tmp_path, tally):
    a, b, env, fs, root = pair
    make_template(
        a / "reports" / "pub.ipynb",
        'audience: Literal["consortium", "public"] = "consortium"',
        "import research_kit as rk\nrk.record('rate', 0.31)\nprint('done')",
    )
    with open(a / "reports" / "batches.yaml", "a") as f:
        f.write("site:\n  - report: pub\n    grid: {audience: [public, consortium]}\n")
    a_env = {**env, "RK_WORKSPACE_RESEARCHER": "Aigul Sadykova", "RK_RUNNER_PDF": "off"}
    run_rk("batch", "site", cwd=a, env=a_env, check=0)
    shutil.rmtree(a / "reports" / "_build" / "other")  # `other` is B's to share here
    run_rk("batch", "shared", "--only", "probe", cwd=a, env=a_env, check=0)
    run_rk("push", cwd=a, env=a_env, check=0)
    run_rk("batch", "shared", "--only", "other", "--no-share", cwd=b, env=env, check=0)
    run_rk("push", cwd=b, env=env, check=0)

    out = run_rk("site", cwd=a, env=env, check=0)
    assert "6 runs from" in out.stdout
    page = (a / "reports" / "_share" / "index.html").read_text()
    assert "run by METU · Aigul Sadykova" in page and "run by KITIG" in page and 'data-facet="run_by"' in page
    assert page.count('class="notebook-link"') == 6
    only = run_rk("site", "--institution", "KITIG", cwd=a, env=env, check=0)
    assert (
        "1 runs from" in only.stdout and "probe" not in (a / "reports" / "_share" / "index.html").read_text()
    )

    public = tmp_path / "public-site"
    out = run_rk("site", "--public", public, cwd=a, env=env, check=0)
    assert "1 publishable runs" in out.stdout
    files = sorted(str(p.relative_to(public)) for p in public.rglob("*") if p.is_file())
    assert (
        files[:2] == [".rk-site", "index.html"]
        and all(f.endswith("/report.html") for f in files[2:])
        and len(files) == 3
    )
    for p in public.rglob("*"):
        if p.is_file():
            text = p.read_text(errors="replace")
            for internal in (
                "audience=consortium",
                "probe",
                "Aigul",
                "notebook.html",
                "manifest.json",
                "report.ipynb",
                "other",
            ):
                assert internal not in text, f"{internal!r} in {p}"
    run_rk("site", "--public", public, cwd=a, env=env, check=0)  # its own folder is replaced
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    out = run_rk("site", "--public", tmp_path / "elsewhere", cwd=a, env=env, check=1)
    tally.bad_inputs += 1
    assert (
        "exists and was not made by rk site" in out.stderr and (tmp_path / "elsewhere" / "notes.txt").exists()
    )
