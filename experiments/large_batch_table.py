r"""The large-batch reality check's table (Nado et al. 2021) over experiments.algoperf workdirs,
each run at one --batch_scale (jaxlab.algoperf.batch_table has what a row holds). Trains
nothing.

  python -m experiments.large_batch_table \
      --workdirs=docs/results/large_batch/rn1,docs/results/large_batch/rn4,docs/results/large_batch/rn16
"""

from absl import app, flags

from jaxlab.algoperf import batch_table

_WORKDIRS = flags.DEFINE_list("workdirs", None, "experiments.algoperf workdirs")
_WORKLOADS = flags.DEFINE_list("workloads", [], "only these workloads (default: all present)")
_ALGORITHMS = flags.DEFINE_list("algorithms", [], "only these algorithms (default: all present)")
_RULESET = flags.DEFINE_string("ruleset", "external", "the ruleset folder to read")
_MARKDOWN_OUT = flags.DEFINE_string("markdown_out", "", "also write the table to this file")
flags.mark_flags_as_required(["workdirs"])


def main(argv):
  del argv
  table = batch_table.markdown([r for w in _WORKDIRS.value for r in batch_table.rows(
      w, _RULESET.value, _WORKLOADS.value, _ALGORITHMS.value)])
  print(table)
  if _MARKDOWN_OUT.value:
    with open(_MARKDOWN_OUT.value, "w") as f:
      f.write(table)


if __name__ == "__main__":
  app.run(main)
