"""A cached run is never stale: the files a report opens (plain pandas, helper modules next to the
templates) and the settings it reads are discovered while it runs and key its cache; what no key
covers is never reused; `rk batch --dry-run` says what changed."""

import json
import shutil

import pytest

from conftest import make_template, run_rk, save

WIDE = {"COLUMNS": "400"}  # the dry run's reasons on one line each


def manifests(root) -> dict:
    return {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in (root / "reports" / "_build").glob("*/*/manifest.json")
    }


def dry_run(root, env, batch) -> dict:
    "{report/parameters: (will, why)} from `rk batch --dry-run`."
    out = run_rk("batch", batch, "--dry-run", cwd=root, env={**env, **WIDE}, check=0).stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.count("│") == 5]
    return {f"{r[0]}/{r[1]}": (r[2], r[3]) for r in rows if r[0] != "report"}


def rk_batch(root, env, batch, *args, check=0):
    return run_rk("batch", batch, "--workers", "1", *args, cwd=root, env={**env, **WIDE}, check=check)


def started(root) -> dict:
    return {k: m["started"] + m["cache_key"] for k, m in manifests(root).items()}


# ---- files: read with plain pandas, imported from reports/ -----------------------------------------


@pytest.fixture
def lookup_workspace(report_workspace):
    """Templates that read lookup/extra.csv with pandas and import reports/helpers.py (twice, so a warm
    worker imports it in a second report after a first one did)."""
    root, d, env = report_workspace
    (root / "lookup").mkdir()
    (root / "lookup" / "extra.csv").write_text("x\n1\n2\n")
    (root / "reports" / "helpers.py").write_text("def scale(n):\n    return 2 * n\n")
    make_template(
        root / "reports" / "extra.ipynb",
        "n: int = 1",
        "import pandas as pd\nimport research_kit as rk\nrk.record('total', int(pd.read_csv('lookup/extra.csv')['x'].sum()))",
    )
    make_template(
        root / "reports" / "helped.ipynb",
        "n: int = 1",
        "import sys\nsys.path.insert(0, 'reports')\nimport helpers\n"
        "import research_kit as rk\nrk.record('scaled', helpers.scale(n))",
    )
    (root / "reports" / "batches.yaml").write_text(
        "lookups:\n  - report: extra\n    parameters: [{n: 1}]\n  - report: helped\n    parameters: [{n: 1}, {n: 2}]\n"
    )
    return root, env


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_a_changed_file_or_helper_reruns_the_runs_that_read_it(lookup_workspace, engine):
    root, env = lookup_workspace
    env = {**env, "RK_RUNNER_ENGINE": engine}
    rk_batch(root, env, "lookups")
    first = manifests(root)
    assert first["extra/n=1"]["records"]["total"] == 3 and first["helped/n=2"]["records"]["scaled"] == 4
    assert first["extra/n=1"]["files"] == [
        {"root": "workspace", "path": "lookup/extra.csv", "sha256": first["extra/n=1"]["files"][0]["sha256"]}
    ]
    for n in (1, 2):  # the second report in the same warm worker imported the helper afresh, and was seen to
        assert [f["path"] for f in first[f"helped/n={n}"]["files"]] == ["reports/helpers.py"], first[
            f"helped/n={n}"
        ]["files"]
    assert all(m["unkeyed"] == [] and m["engine"] == engine for m in first.values())
    assert {k: w for k, (w, _) in dry_run(root, env, "lookups").items()} == dict.fromkeys(
        first, "cached"
    )  # unchanged: cached

    (root / "lookup" / "extra.csv").write_text("x\n1\n2\n7\n")
    assert dry_run(root, env, "lookups") == {
        "extra/n=1": ("run", "file lookup/extra.csv changed"),
        "helped/n=1": ("cached", ""),
        "helped/n=2": ("cached", ""),
    }
    before = started(root)
    rk_batch(root, env, "lookups")
    after = manifests(root)
    assert after["extra/n=1"]["records"]["total"] == 10  # the new figures, not the old ones
    assert (
        started(root)["helped/n=1"] == before["helped/n=1"]
        and started(root)["helped/n=2"] == before["helped/n=2"]
    )

    (root / "reports" / "helpers.py").write_text("def scale(n):\n    return 3 * n\n")
    extra_run = started(root)["extra/n=1"]
    dry = dry_run(root, env, "lookups")
    assert (
        dry["helped/n=1"] == dry["helped/n=2"] == ("run", "file reports/helpers.py changed")
        and dry["extra/n=1"][0] == "cached"
    )
    rk_batch(root, env, "lookups")
    assert [manifests(root)[f"helped/n={n}"]["records"]["scaled"] for n in (1, 2)] == [3, 6]
    assert started(root)["extra/n=1"] == extra_run and manifests(root)["extra/n=1"]["records"]["total"] == 10
    assert {k: w for k, (w, _) in dry_run(root, env, "lookups").items()} == dict.fromkeys(first, "cached")


def test_a_file_read_then_removed_or_a_missing_file_created_reruns(lookup_workspace):
    root, env = lookup_workspace
    make_template(
        root / "reports" / "optional.ipynb",
        "n: int = 1",
        "import research_kit as rk\ntry: text = open('lookup/optional.csv').read()\nexcept FileNotFoundError: text = ''\n"
        "rk.record('text', text)",
    )
    (root / "reports" / "batches.yaml").write_text("opt:\n  - report: optional\n    parameters: [{n: 1}]\n")
    rk_batch(root, env, "opt")
    assert manifests(root)["optional/n=1"]["files"] == [
        {"root": "workspace", "path": "lookup/optional.csv", "sha256": None}
    ]
    assert dry_run(root, env, "opt")["optional/n=1"][0] == "cached"
    (root / "lookup" / "optional.csv").write_text("now here")
    assert dry_run(root, env, "opt")["optional/n=1"] == ("run", "file lookup/optional.csv appeared")
    rk_batch(root, env, "opt")
    assert manifests(root)["optional/n=1"]["records"]["text"] == "now here"
    (root / "lookup" / "optional.csv").unlink()
    assert dry_run(root, env, "opt")["optional/n=1"] == ("run", "file lookup/optional.csv is gone")


def test_what_a_run_read_does_not_depend_on_the_data_cache(report_workspace):
    # the loader reads a data file (and the files its foreign keys point to) only when its cache
    # misses: two runs, one on a cold cache and one on a warm one, read the same and share a store
    root, d, env = report_workspace
    (root / "reports" / "batches.yaml").write_text(
        "two:\n  - report: tiny\n    parameters: [{n: 1}, {n: 2}]\n"
    )
    rk_batch(root, env, "two")
    cold, warm = manifests(root).values()
    assert (
        cold["files"]
        == warm["files"]
        == [{"root": "data", "path": "mini/datapackage.yaml", "sha256": cold["files"][0]["sha256"]}]
    )
    assert cold["inputs"] == warm["inputs"]


@pytest.mark.parametrize("engine", ["warm", "kernel"])
def test_data_loaded_from_another_root_reruns_when_it_changes_there(report_workspace, tmp_path, engine):
    # rk.load(..., root=) reads another data root: the run's lineage names that root, and the cache
    # check hashes the file there, not the workspace's own copy of the same package
    from conftest import PEOPLE, write_resource

    root, d, env = report_workspace
    env = {**env, "RK_RUNNER_ENGINE": engine}
    other = tmp_path / "elsewhere"
    shutil.copytree(root / "datasets", other)
    make_template(
        root / "reports" / "away.ipynb",
        "n: int = 1",
        f"import research_kit as rk\nrk.record('people', len(rk.load('mini', 'people', root={str(other)!r})))",
    )
    (root / "reports" / "batches.yaml").write_text("away:\n  - report: away\n    parameters: [{n: 1}]\n")
    rk_batch(root, env, "away")
    [m] = manifests(root).values()
    assert m["records"]["people"] == 3 and [i.get("root") for i in m["inputs"]] == [str(other)], m["inputs"]
    assert {"root": "workspace", "path": str(other / "mini" / "datapackage.yaml")} in [
        {k: f[k] for k in ("root", "path")} for f in m["files"]
    ], m["files"]
    assert dry_run(root, env, "away") == {"away/n=1": ("cached", "")}

    write_resource(
        other / "mini", d, "people", "".join(PEOPLE.splitlines(keepends=True)[:-1])
    )  # one person fewer
    save(other / "mini", d)
    assert (
        dry_run(root, env, "away")["away/n=1"][0] == "run"
    )  # the workspace's own mini/people did not change
    rk_batch(root, env, "away")
    [m] = manifests(root).values()
    assert m["records"]["people"] == 2


# ---- settings: the privacy threshold, the researcher's institution --------------------------------

PRIVACY_PARAMS = (
    'audience: Literal["consortium", "public"] = "consortium"  # who reads it\nn: int = 1  # a number'
)
PRIVACY_CODE = (
    "import research_kit as rk\nfrom research_kit.analysis.privacy import count_value\n"
    "from research_kit.settings import load_settings\npeople = rk.load('mini', 'people')\n"
    "k = load_settings().threshold if audience == 'public' else None  # only where it applies\n"
    "rk.record('people', count_value(len(people), k, audience=audience))"
)
WITH_THRESHOLD = "[workspace]\ndata = datasets\ncache = .cache\n[privacy]\nthreshold = {}\n"


def test_raising_the_threshold_reruns_exactly_the_public_runs(report_workspace):
    root, d, env = report_workspace
    make_template(root / "reports" / "audiences.ipynb", PRIVACY_PARAMS, PRIVACY_CODE)
    (root / "reports" / "batches.yaml").write_text(
        "both:\n  - report: audiences\n    grid: {audience: [consortium, public], n: [1, 2]}\n"
    )
    (root / "settings.ini").write_text(WITH_THRESHOLD.format(2))
    rk_batch(root, env, "both")
    first = manifests(root)
    public = sorted(k for k in first if "audience=public" in k)
    assert len(first) == 4 and len(public) == 2 and all(m["records"]["people"] == 3 for m in first.values())
    assert all(first[k]["settings"] == {"privacy.threshold": "2"} for k in public)
    assert all(first[k]["settings"] == {} for k in first if k not in public)  # a consortium run never read it
    before = started(root)

    (root / "settings.ini").write_text(WITH_THRESHOLD.format(5))
    dry = dry_run(root, env, "both")
    assert {k: v for k, v in dry.items() if v[0] == "run"} == dict.fromkeys(
        public, ("run", "setting privacy.threshold: '2' -> '5'")
    )
    rk_batch(root, env, "both")
    after, now = manifests(root), started(root)
    assert sorted(k for k in now if now[k] != before[k]) == public  # exactly the public runs ran again
    assert [after[k]["records"]["people"] for k in public] == [
        None,
        None,
    ]  # 3 people, now below the threshold
    # the same through the environment: RK_PRIVACY_THRESHOLD is the same setting
    assert (
        sorted(
            k
            for k, v in dry_run(root, {**env, "RK_PRIVACY_THRESHOLD": "40"}, "both").items()
            if v[0] == "run"
        )
        == public
    )


def test_changing_the_institution_reruns_exactly_the_runs_that_read_restricted_data(report_workspace):
    # kernel engine: the settings are discovered in a kernel too
    root, d, env = report_workspace
    d["resources"][1].update({"x-access": "restricted", "x-owner": "ATK"})  # people
    save(root / "datasets" / "mini", d)
    make_template(
        root / "reports" / "names.ipynb",
        "n: int = 1",
        "import research_kit as rk\nrk.record('institutions', len(rk.load('mini', 'institutions')))",
    )
    (root / "reports" / "batches.yaml").write_text(
        "mixed:\n  - report: tiny\n    parameters: [{n: 1}]\n  - report: names\n    parameters: [{n: 1}]\n"
    )
    (root / "settings.ini").write_text(
        "[workspace]\ndata = datasets\ncache = .cache\n[runner]\nengine = kernel\n"
    )
    # the institution is the researcher's own setting, in their own file outside the workspace
    own = root.parent / "researcher.ini"
    env = {**env, "RK_USER_SETTINGS": str(own)}
    own.write_text("[workspace]\ninstitution = ATK\n")
    rk_batch(root, env, "mixed")
    first = manifests(root)
    assert first["tiny/label=x,mode=a,n=1"]["settings"] == {"workspace.institution": "ATK"}
    assert first["names/n=1"]["settings"] == {} and first["names/n=1"]["engine"] == "kernel"
    own.write_text("[workspace]\ninstitution = KITIG\n")
    assert dry_run(root, env, "mixed") == {
        "tiny/label=x,mode=a,n=1": ("run", "setting workspace.institution: 'ATK' -> 'KITIG'"),
        "names/n=1": ("cached", ""),
    }
    proc = rk_batch(root, env, "mixed", check=1)
    m = manifests(root)["tiny/label=x,mode=a,n=1"]
    # before, KITIG was shown ATK's restricted run from the cache; now it runs, and may not read the data
    assert (
        m["status"] == "failed"
        and m["error"]["type"] == "AccessDenied"
        and "restricted to its owner ATK" in m["error"]["message"]
    )
    assert (
        manifests(root)["names/n=1"]["started"] == first["names/n=1"]["started"]
        and "1 report failed" in proc.stderr
    )


# ---- what no key covers ---------------------------------------------------------------------------


def test_a_run_no_key_covers_is_never_reused_and_the_summary_says_why(report_workspace):
    root, d, env = report_workspace
    make_template(
        root / "reports" / "clock.ipynb",
        "n: int = 1",
        "import datetime\nimport research_kit as rk\nrk.record('year', datetime.date.today().year)",
    )
    make_template(
        root / "reports" / "network.ipynb",
        "n: int = 1",
        "import socket\nimport research_kit as rk\n"
        "try: socket.create_connection(('127.0.0.1', 9), timeout=1).close()\nexcept OSError: pass\nrk.record('n', n)",
    )
    (root / "reports" / "batches.yaml").write_text(
        "unkeyed:\n  - report: clock\n    parameters: [{n: 1}]\n  - report: network\n    parameters: [{n: 1}]\n"
        "  - report: other\n    parameters: [{k: 1}]\n"
    )
    rk_batch(root, env, "unkeyed")
    first = manifests(root)
    assert first["clock/n=1"]["unkeyed"] == ["template cell 4 reads the current date or time"]
    assert first["network/n=1"]["unkeyed"] == [
        "it connected to 127.0.0.1:9, outside the data root: what it read there is not keyed"
    ]
    assert first["other/k=1"]["unkeyed"] == []
    dry = dry_run(root, env, "unkeyed")
    assert dry == {
        "clock/n=1": ("run", "not keyed: template cell 4 reads the current date or time"),
        "network/n=1": ("run", f"not keyed: {first['network/n=1']['unkeyed'][0]}"),
        "other/k=1": ("cached", ""),
    }
    out = rk_batch(root, env, "unkeyed").stdout
    assert "ran again: clock/n=1: template cell 4 reads the current date or time" in out, out
    assert "ran again: network/n=1: it connected to 127.0.0.1:9" in out and "ran again: other" not in out
    assert manifests(root)["other/k=1"]["started"] == first["other/k=1"]["started"]


def test_a_run_rk_verify_finds_irreproducible_is_never_reused_until_its_inputs_change(report_workspace):
    """What no scan of the code finds (here the worker's process id) shows when a re-run with the same
    inputs gives other results: rk verify says so in the manifest, and every batch runs it again, saying
    why, until its inputs change."""
    root, d, env = report_workspace
    pid = root / "reports" / "pid.ipynb"
    make_template(pid, "n: int = 1", "import os\nimport research_kit as rk\nrk.record('pid', os.getpid())")
    (root / "reports" / "batches.yaml").write_text(
        "pids:\n  - report: pid\n    parameters: [{n: 1}]\n  - report: other\n    parameters: [{k: 1}]\n"
    )
    rk_batch(root, env, "pids")
    assert manifests(root)["pid/n=1"]["unkeyed"] == [] and dry_run(root, env, "pids")["pid/n=1"] == (
        "cached",
        "",
    )
    proc = run_rk("verify", "--batch", "pids", cwd=root, env={**env, **WIDE}, check=1)
    found = (
        "a re-run with the same inputs gave other results (record pid): "
        "something no key covers decides them, such as unseeded randomness"
    )
    assert (
        manifests(root)["pid/n=1"]["unkeyed"] == ["rk verify: " + found]
        and manifests(root)["other/k=1"]["unkeyed"] == []
    )
    assert (
        f"never reused: pid/n=1: {found}; every batch runs it again until its inputs change" in proc.stdout
    ), proc.stdout
    assert dry_run(root, env, "pids") == {
        "pid/n=1": ("run", "not keyed: rk verify: " + found),
        "other/k=1": ("cached", ""),
    }
    out = rk_batch(root, env, "pids").stdout
    assert "ran again: pid/n=1: rk verify: " + found in out, out
    assert manifests(root)["pid/n=1"]["unkeyed"] == ["rk verify: " + found]  # the same inputs again: still so
    make_template(pid, "n: int = 1", "import research_kit as rk\nrk.record('pid', 0)")  # fixed
    rk_batch(root, env, "pids")
    assert manifests(root)["pid/n=1"]["unkeyed"] == [] and dry_run(root, env, "pids")["pid/n=1"] == (
        "cached",
        "",
    )


def test_with_discovery_off_every_run_runs_again(report_workspace):
    root, d, env = report_workspace
    off = {**env, "RK_RUNNER_DISCOVERY": "off"}
    (root / "reports" / "batches.yaml").write_text("one:\n  - report: other\n    parameters: [{k: 1}]\n")
    rk_batch(root, off, "one")
    assert manifests(root)["other/k=1"]["files"] == [] and manifests(root)["other/k=1"]["unkeyed"]
    why = "not keyed: the files and settings it read were not discovered ([runner] discovery = off)"
    assert dry_run(root, env, "one") == {"other/k=1": ("run", why)}  # turned on again: still not reused


def test_a_bad_discovery_setting_is_one_error_line(report_workspace, tally):
    root, d, env = report_workspace
    (root / "settings.ini").write_text("[runner]\ndiscovery = sometimes\n")
    proc = run_rk("batch", "small", "--dry-run", cwd=root, env=env)
    tally.bad_inputs += 1
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {root / 'settings.ini'}:2: [runner] discovery = 'sometimes'; "
        "expected on (discover the files and settings each run reads) or off"
    ]


# ---- the dry run names every kind of change --------------------------------------------------------


def test_the_dry_run_names_template_cells_data_code_and_environment(report_workspace):
    root, d, env = report_workspace
    (root / "reports" / "batches.yaml").write_text(
        "two:\n  - report: tiny\n    parameters: [{n: 1}]\n  - report: other\n    parameters: [{k: 1}]\n"
    )
    rk_batch(root, env, "two")
    import nbformat

    other = root / "reports" / "other.ipynb"
    nb = nbformat.read(other, as_version=4)
    nb.cells[3].source += "\nrk.record('twice', 2 * k)"
    nbformat.write(nb, other)
    people = root / "datasets" / "mini" / "people.csv"
    people.write_text(people.read_text() + "P-004,ATK,30,paid,1.5,2021-09-01,true\n")
    d["resources"][1]["hash"] = "sha256:" + __import__("hashlib").sha256(people.read_bytes()).hexdigest()
    save(root / "datasets" / "mini", d)
    dry = dry_run(root, env, "two")
    assert dry["other/k=1"] == ("run", "template cell 4 edited")
    assert dry["tiny/label=x,mode=a,n=1"] == (
        "run",
        "data mini/people changed; file mini/datapackage.yaml changed",
    ), dry
    # research_kit's code and the environment cannot change under a test: an earlier run made with others
    path = root / "reports" / "_build" / "other" / "k=1" / "manifest.json"
    m = json.loads(path.read_text())
    m["code"]["source_sha256"], m["environment"]["packages_sha256"] = "0" * 64, "1" * 64
    path.write_text(json.dumps(m))
    assert dry_run(root, env, "two")["other/k=1"] == (
        "run",
        "template cell 4 edited; research_kit code changed; environment changed (installed packages)",
    )


def fake_distributions(folder, *names_versions) -> str:
    "Write `name-version.dist-info` folders with a minimal METADATA into `folder`; returns the folder."
    for name, version in names_versions:
        d = folder / f"{name}-{version}.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
    return str(folder)


def test_the_environment_key_is_the_same_wherever_the_same_versions_are_installed(report_workspace, tmp_path):
    """Two machines with the same versions of research_kit's requirements share a run's key, whatever else they
    installed, wherever, and on any platform; another version of one requirement changes it."""
    import os
    from importlib.metadata import version

    root, d, env = report_workspace
    (root / "reports" / "batches.yaml").write_text("one:\n  - report: other\n    parameters: [{k: 1}]\n")
    env = {**env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    rk_batch(root, env, "one")

    def on_path(folder):  # distributions installed in `folder` come first, as a second site-packages would
        return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}

    others = fake_distributions(
        tmp_path / "others",
        ("a-linter", "24.1"),
        ("jupyterlab-a-theme", "0.3"),
        ("pywin32", "306"),
        ("appnope", "0.1.4"),
        ("colorama", "0.4.6"),
    )
    assert dry_run(root, on_path(others), "one")["other/k=1"][0] == "cached"
    same_elsewhere = fake_distributions(tmp_path / "same", ("nh3", version("nh3")))
    assert dry_run(root, on_path(same_elsewhere), "one")["other/k=1"][0] == "cached"
    newer = fake_distributions(tmp_path / "newer", ("nh3", "99.0"))
    assert dry_run(root, on_path(newer), "one")["other/k=1"] == (
        "run",
        "environment changed (installed packages)",
    )
    # the closure is kept per set of installed distributions in the researcher's cache; a damaged entry is worked out again
    entries = list((tmp_path / "cache" / "research_kit" / "environments").glob("*.json"))
    assert len(entries) == 3, (
        entries
    )  # the same versions elsewhere are the same set: one entry with the first
    for e in entries:
        e.write_text("{not json", encoding="utf-8")
    assert dry_run(root, on_path(others), "one")["other/k=1"][0] == "cached"
    assert dry_run(root, on_path(newer), "one")["other/k=1"][0] == "run"


# ---- the index of a build folder nothing changed in is left as it is -------------------------------


def test_a_cached_batch_renders_the_index_again_whenever_what_it_shows_changed(lookup_workspace):
    """A cached rerun leaves an index that shows the build folder as it is, also right after the batch that wrote
    it; a manifest rewritten, an output removed, a run folder added or removed since, each renders it again."""
    root, env = lookup_workspace
    build = root / "reports" / "_build"
    index = build / "index.html"

    rk_batch(root, env, "lookups")
    kept = index.stat().st_ino
    rk_batch(root, env, "lookups")
    # nothing changed: left as it is, though its manifests were written just now
    assert index.stat().st_ino == kept

    run = build / "extra" / "n=1"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["records"]["total"] = 123456789
    (run / "manifest.json").write_text(json.dumps(manifest))  # in place, as an editor writes
    rk_batch(root, env, "lookups")
    assert "123456789" in index.read_text()

    (run / "report.html").unlink()
    rk_batch(root, env, "lookups")
    assert "extra/n=1/report.html" not in index.read_text() and "extra/n=1/notebook.html" in index.read_text()

    shutil.copytree(run, build / "extra" / "n=7")
    rk_batch(root, env, "lookups")
    assert 'data-slug="n=7"' in index.read_text()
    shutil.rmtree(build / "extra" / "n=7")
    rk_batch(root, env, "lookups")
    assert 'data-slug="n=7"' not in index.read_text() and 'data-slug="n=1"' in index.read_text()
