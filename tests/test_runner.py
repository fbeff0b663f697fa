"""Report runs end to end through the real `rk` command: parameters, outputs, manifests, caching,
failures, the index page, verification and the build lock."""

import json
import os
import shutil

import nbformat
import pytest

from conftest import PEOPLE, run_rk, save, write_resource


def build(root):
    return root / "reports" / "_build"


def manifest(root, report, slug):
    return json.loads((build(root) / report / slug / "manifest.json").read_text())


def test_params_lists_declarations(report_workspace):
    root, _, env = report_workspace
    out = run_rk("params", "tiny", cwd=root, env=env, check=0).stdout
    assert "n" in out and "int" in out and "a number" in out and "'a', 'b'" not in out and "a, b" in out


def test_path_like_values_stay_inside_the_build_folder(report_workspace):
    root, _, env = report_workspace
    run_rk("run", "tiny", "-p", "label=../../../escape", cwd=root, env=env, check=0)
    [folder] = (build(root) / "tiny").iterdir()
    assert folder.name == "label=%2E%2E%2F%2E%2E%2F%2E%2E%2Fescape,mode=a,n=1"
    assert not (root / "escape").exists() and not (root.parent / "escape").exists()
    assert json.loads((folder / "manifest.json").read_text())["records"]["label"] == "../../../escape"


def test_run_writes_outputs_and_manifest_then_caches(report_workspace):
    root, _, env = report_workspace
    proc = run_rk("run", "tiny", "-p", "n=7", "-p", "label=007", cwd=root, env=env, check=0)
    slug = "label=007,mode=a,n=7"
    folder = build(root) / "tiny" / slug
    assert {p.name for p in folder.iterdir()} == {
        "report.ipynb",
        "report.html",
        "notebook.html",
        "manifest.json",
    }
    m = manifest(root, "tiny", slug)
    assert m["status"] == "succeeded" and m["parameters"] == {"n": 7, "label": "007", "mode": "a"}
    assert m["records"] == {"n_people": 3, "n": 7, "label": "007", "mean_age": 19.0}  # label stays text
    assert [(i["package"], i["resource"]) for i in m["inputs"]] == [
        ("mini", "people")
    ]  # what the report loaded
    assert m["engine"] == "warm" and m["code"]["source_sha256"] and m["environment"]["packages_sha256"]
    assert (
        set(m["outputs"]) == {"report.ipynb", "report.html", "notebook.html"}
        and len(m["template"]["sha256"]) == 64
    )
    assert m["pdf"]["made"] is False and "not a public run" in m["pdf"]["reason"]  # [runner] pdf = auto
    nb = nbformat.read(folder / "report.ipynb", as_version=4)
    nbformat.validate(nb)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    html = (folder / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "n_people" in html
    assert (build(root) / "index.html").exists() and slug.replace(",", "") in (
        build(root) / "index.html"
    ).read_text().replace(",", "")

    again = run_rk("run", "tiny", "-p", "n=7", "-p", "label=007", cwd=root, env=env, check=0)
    assert "cached" in again.stdout
    assert manifest(root, "tiny", slug)["started"] == m["started"]
    forced = run_rk("run", "tiny", "-p", "n=7", "-p", "label=007", "--force", cwd=root, env=env, check=0)
    assert "succeeded" in forced.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["run", "tiny", "-p", "nn=2"], ["unknown parameter 'nn'", "did you mean 'n'"]),
        (["run", "tiny", "-p", "n=two"], ["n='two'", "whole number"]),
        (["run", "tiny", "-p", "mode=c"], ["mode='c'", "one of a, b"]),
        (["run", "tiny", "-p", "n"], ["name=value"]),
        (["run", "tinny"], ["unknown report 'tinny'", "did you mean 'tiny'"]),
        (["run", "../tiny"], ["invalid report name"]),
        (["run", "tiny", "-p", "n=1.5"], ["n='1.5'", "whole number"]),
        (["batch", "smal"], ["unknown batch 'smal'", "did you mean 'small'"]),
        (["params", "/etc/passwd"], ["invalid report name"]),
    ],
)
def test_bad_run_requests_write_nothing(report_workspace, args, fragments, tally):
    root, _, env = report_workspace
    tally.bad_inputs += 1
    proc = run_rk(*args, cwd=root, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr
    assert not build(root).exists()


def test_batch_failure_does_not_stop_others_and_cache_tracks_changes(report_workspace):
    root, d, env = report_workspace
    proc = run_rk("batch", "small", "--workers", "2", cwd=root, env=env)
    assert proc.returncode == 1 and "1 report failed" in proc.stderr
    failed = manifest(root, "flaky", "n=2")
    assert (
        failed["status"] == "failed"
        and failed["error"]["type"] == "ValueError"
        and "must not be 2" in failed["error"]["message"]
    )
    assert failed["error"]["cell"] is not None
    assert (build(root) / "flaky" / "n=2" / "report.ipynb").exists()
    assert manifest(root, "flaky", "n=3")["status"] == "succeeded" and manifest(root, "other", "k=5")[
        "records"
    ] == {"k": 5}
    index = (build(root) / "index.html").read_text()
    assert index.count('data-status="succeeded"') == 7 and index.count('data-status="failed"') == 1

    def will_run():
        out = run_rk("batch", "small", "--dry-run", cwd=root, env=env, check=0).stdout
        return sorted(
            l.split("│")[1].strip() + "/" + l.split("│")[2].strip()
            for l in out.splitlines()
            if l.count("│") >= 3 and l.split("│")[3].strip() == "run"
        )

    assert will_run() == ["flaky/n=2"]  # only the failed run is redone

    # outputs or metadata of a template do not count; a changed cell does, for that report only
    other = root / "reports" / "other.ipynb"
    nb = nbformat.read(other, as_version=4)
    nb.metadata["authors"] = ["someone"]
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="old output")]
    nb.cells[3].execution_count = 3
    nbformat.write(nb, other)
    assert will_run() == ["flaky/n=2"]
    nb.cells[3].source += "\n# a comment"
    nbformat.write(nb, other)
    assert will_run() == ["flaky/n=2", "other/k=5"]

    # changed data reruns exactly the runs that read it
    pkg = root / "datasets" / "mini"
    write_resource(pkg, d, "people", PEOPLE + "P-004,ATK,30,paid,1.5,2021-09-01,true\n")
    save(pkg, d)
    assert will_run() == ["flaky/n=2", "other/k=5"] + [
        f"tiny/label=x,mode={m},n={n}" for m in "ab" for n in (1, 2)
    ]
    proc = run_rk("batch", "small", "--only", "tiny", cwd=root, env=env, check=0)
    assert manifest(root, "tiny", "label=x,mode=a,n=1")["records"]["n_people"] == 4


def test_verify_finds_differences(report_workspace):
    root, _, env = report_workspace
    run_rk("run", "other", "-p", "k=3", cwd=root, env=env, check=0)
    folder = build(root) / "other" / "k=3"
    proc = run_rk("verify", folder, cwd=root, env=env, check=0)
    assert "identical" in proc.stdout
    m = json.loads((folder / "manifest.json").read_text())
    m["records"]["k"] = 4
    (folder / "manifest.json").write_text(json.dumps(m))
    proc = run_rk("verify", folder, cwd=root, env=env)
    assert proc.returncode == 1 and "record" in proc.stdout and "k" in proc.stdout


def test_verify_a_batch(report_workspace):
    root, _, env = report_workspace
    proc = run_rk("verify", "--batch", "small", cwd=root, env=env)
    assert proc.returncode == 1 and "no finished runs" in proc.stderr
    run_rk("batch", "small", "--only", "other", cwd=root, env=env, check=0)
    proc = run_rk("verify", "--batch", "small", cwd=root, env=env, check=0)
    assert "verified 1 run" in proc.stdout


def test_second_writer_is_refused_while_the_lock_is_held(report_workspace):
    import fcntl

    root, _, env = report_workspace
    build(root).mkdir(parents=True)
    with open(build(root) / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("pid 12345")
        f.flush()
        proc = run_rk("run", "other", cwd=root, env=env)
    assert proc.returncode == 1 and "is writing" in proc.stderr and "--wait" in proc.stderr
    assert not (build(root) / "other").exists()


def test_an_unchanged_rerun_needs_no_build_lock(report_workspace):
    """A rerun with nothing to write (every run cached, its verdict current, the index showing the build folder as it
    is) reads only, so another writer's lock does not stop it; one that must write something is still refused."""
    import fcntl

    root, _, env = report_workspace
    run_rk("run", "other", cwd=root, env=env, check=0)
    index = build(root) / "index.html"
    with open(build(root) / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        cached = run_rk("run", "other", cwd=root, env=env)
        index.unlink()  # the index no longer shows the build folder: this rerun has to write it
        refused = run_rk("run", "other", cwd=root, env=env)
    assert cached.returncode == 0 and "cached" in cached.stdout, cached.stdout + cached.stderr
    assert refused.returncode == 1 and "is writing" in refused.stderr, refused.stdout + refused.stderr
    assert not index.exists()  # nothing was written while the other held the lock
    run_rk("run", "other", cwd=root, env=env, check=0)
    assert "other" in index.read_text(encoding="utf-8")  # and once it is free, the page is written again


def edit_template(path, index, source):
    nb = nbformat.read(path, as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, path)


def test_verify_after_the_template_gained_a_parameter(report_workspace, tally):
    """The re-run uses the run's own parameters and the new one's default, says so, and compares
    against the run's own folder (whose name the new parameter would change)."""
    root, _, env = report_workspace
    run_rk("run", "other", "-p", "k=3", cwd=root, env=env, check=0)
    edit_template(root / "reports" / "other.ipynb", 2, "k: int = 0\nbins: int = 10  # a new parameter")
    tally.bad_inputs += 1
    proc = run_rk("verify", build(root) / "other" / "k=3", cwd=root, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "the template changed since this run" in out and "cell 3 edited" in out, proc.stdout
    assert "bins" in out and "10 (its default)" in out, proc.stdout
    assert "record" not in out and "output" not in out, proc.stdout  # same records and outputs as the run


def test_verify_says_which_template_cells_changed(report_workspace):
    root, _, env = report_workspace
    run_rk("run", "other", "-p", "k=3", cwd=root, env=env, check=0)
    edit_template(root / "reports" / "other.ipynb", 3, "import research_kit as rk\nrk.record('k', k + 1)")
    nb = nbformat.read(root / "reports" / "other.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('a new cell')"))
    nbformat.write(nb, root / "reports" / "other.ipynb")
    proc = run_rk("verify", build(root) / "other" / "k=3", cwd=root, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    out = " ".join(proc.stdout.split())
    assert (
        "the template changed since this run" in out and "cell 4 edited" in out and "cell 5 added" in out
    ), proc.stdout
    assert "record" in out and "k" in out, proc.stdout  # and the difference it explains
    assert out.index("the template changed") < out.index("record")
