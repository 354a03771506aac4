"""Hand-computed paired contrasts quoted in experiments/RESULTS.md (outside every table's baseline family).
Paired by seed (jaxrae.report.paired_difference, scipy.stats.ttest_rel), Holm within each section's family.
Run from the repository root: python experiments/analysis/contrasts.py"""

import json

from jaxrae.report import holm, paired_difference

R = "experiments/results/{}/results.json"


def load(t):
    return json.load(open(R.format(t)))["methods"]


def c(a, ma, b, mb=None):
    return (a, ma, b, mb or ma)


X = ["ae", "cv-vae", "wae", "rae", "rae-l2", "rae-gp", "vae", "rae-sn"]
RAES = ["rae", "rae-l2", "rae-gp"]
D = ["dvae", "dvae-st", "dae", "drae", "drae-noise", "drae-l2", "drae-gp", "drae-sn", "vqvae", "fsq"]
fam = {}
for t in ["table1_digits", "table1_fashion_mnist"]:
    fam[(t, "claim1 ex-post - prior")] = [c(m, "fd_ex_post", m, "fd_prior") for m in X]
    fam[(t, "claim2 RAEs vs baselines, ex-post")] = [c(r, "fd_ex_post", "vae", "fd_prior") for r in RAES] + [
        c(r, "fd_ex_post", b) for b in ["cv-vae", "wae"] for r in RAES
    ]
    fam[(t, "claim3 RAEs vs cv-vae/wae, rec and interp")] = [
        c(r, m, b) for m in ["rec_error", "fd_interp"] for b in ["cv-vae", "wae"] for r in RAES
    ]
    fam[(t, "claim4 RAEs vs ae")] = [
        c(r, m, "ae") for m in ["fd_ex_post", "recall", "fd_interp", "rec_error", "fd_prior"] for r in RAES
    ] + [c("ae", "fd_ex_post", "cv-vae"), c("rae", "fd_prior", "wae")]
    fam[(t, "claim5 vs rae")] = [
        c(r, m, "rae")
        for m in ["fd_ex_post", "fd_interp", "rec_error", "fd_prior"]
        for r in ["rae-l2", "rae-gp", "rae-sn"]
    ]
for t in ["table1_discrete_digits", "table1_discrete_fashion_mnist"]:
    fam[(t, "D1 ex-post - uniform prior")] = [c(m, "fd_ex_post", m, "fd_prior") for m in D]
    fam[(t, "D2 dRAEs ex-post vs dvae prior")] = [
        c(r, "fd_ex_post", "dvae", "fd_prior") for r in ["drae", "drae-l2", "drae-gp", "drae-noise"]
    ]
    fam[(t, "D3 dae - drae")] = [
        c("dae", m, "drae")
        for m in ["perplexity", "distinct_codes", "rec_error", "fd_interp", "fd_prior", "fd_ex_post", "recall"]
    ] + [c("vqvae", "perplexity", "drae")]
    fam[(t, "D4 vs drae")] = [
        c(r, m, "drae")
        for m in ["fd_ex_post", "fd_interp", "rec_error", "fd_prior"]
        for r in ["drae-l2", "drae-gp", "drae-noise", "drae-sn"]
    ] + [c("drae-noise", "recall", "drae"), c("drae-noise", "perplexity", "drae")]
    fam[(t, "D5 references")] = (
        [c("vqvae", m, "drae") for m in ["rec_error", "fd_ex_post", "recall"]]
        + [c("vqvae", "fd_ex_post", b) for b in ["drae-l2", "drae-gp", "drae-noise"]]
        + [c("fsq", m, "drae") for m in ["rec_error", "fd_ex_post"]]
        + [c("fsq", m, "vqvae") for m in ["rec_error", "fd_ex_post", "fd_interp", "precision"]]
        + [c("fsq", m, "drae-noise") for m in ["fd_ex_post", "fd_interp", "rec_error"]]
    )
for t in ["estimators", "estimators_fashion_mnist"]:
    fam[(t, "E2 gumbel-rao - st-gumbel")] = [
        c(f"gumbel-rao-tau{k}", m, f"st-gumbel-tau{k}") for m in ["rec_error", "fd_ex_post"] for k in ["0.5", "1", "2"]
    ]
    fam[(t, "E3 reinmax vs st-gumbel / gumbel-rao")] = [
        c(f"reinmax-tau{k}", m, f"st-gumbel-tau{k}") for m in ["rec_error", "fd_ex_post"] for k in ["1", "2"]
    ] + [c("reinmax-tau2", m, "gumbel-rao-tau2") for m in ["rec_error", "fd_ex_post"]]
    fam[(t, "temperature within an estimator")] = [
        c(f"{e}-tau{hi}", m, f"{e}-tau{lo}")
        for e in ["st-gumbel", "gumbel-rao", "reinmax"]
        for lo, hi in [("0.5", "1"), ("1", "2"), ("0.5", "2")]
        for m in ["rec_error", "fd_ex_post"]
    ]

for (t, name), cs in fam.items():
    M = load(t)
    rows = []
    for a, ma, b, mb in cs:
        A, B = M[a], M[b]
        d = paired_difference(A["metrics"][ma], A["seeds"], A["ok"], B["metrics"][mb], B["seeds"], B["ok"])
        assert A["seeds"] == B["seeds"]
        rows.append((a, ma, b, mb, d))
    ph = holm([r[4]["p"] for r in rows])
    print(f"\n## {t} | {name} | family of {sum(1 for r in rows if r[4]['p'] == r[4]['p'])}")
    for (a, ma, b, mb, d), h in zip(rows, ph):
        lab = f"{a}:{ma} - {b}:{mb}" if ma != mb else f"{a} - {b} [{ma}]"
        star = "*" if h <= 0.05 else ("(u)" if d["p"] < 0.05 else "")
        print(f"{lab:52s} {d['mean']:+.4g} [{d['ci_low']:.4g}, {d['ci_high']:.4g}] p={d['p']:.3g} holm={h:.3g} {star}")
