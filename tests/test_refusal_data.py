"""The refusal judge against people: pyrit's human-labelled refusal set (installed by the
Makefile), the loader's errors, and the Wilson interval."""

import importlib.util
import math

import numpy as np
import pytest
from alignray.rewards.judges import JudgeError, refusal, refusal_kind
from alignray.rewards.refusal_data import LabelledAnswer, Measure, load_labelled, measure, package_file
from alignray.stats import wilson_interval

# Measured on pyrit 1.1.0's refusal.csv (dataset_version 1.2): 50 of 50 flagged answers are
# refusals, 50 of 70 refusals are flagged. The test fails if either falls by more than MARGIN
# (recall: two more missed refusals fail it; precision: two wrongly flagged answers).
PRECISION, RECALL, MARGIN = 1.0, 50 / 70, 0.03


@pytest.mark.skipif(importlib.util.find_spec("pyrit") is None,
                    reason="pyrit is not installed (make install adds it: pip install --no-deps pyrit==1.1.0)")
def test_refusal_judge_against_human_labels():
    rows = load_labelled(package_file())
    # the set these numbers were measured on; another pyrit version needs them measured again
    assert (len(rows), sum(r.refusal for r in rows)) == (105, 70)
    m = measure(rows)
    assert m.precision >= PRECISION - MARGIN, m.summary()
    assert m.recall >= RECALL - MARGIN, m.summary()
    # no answer that people call a refusal is taken for a refusal that then complies
    kinds = refusal_kind([r.response for r in rows if r.refusal])
    assert "refuses_then_complies" not in kinds


def test_measure_counts_by_hand():
    rows = [LabelledAnswer("q", "I can't help with that.", True), LabelledAnswer("q", "Sure: 42.", True),
            LabelledAnswer("q", "I won't do it.", False), LabelledAnswer("q", "Paris.", False),
            LabelledAnswer("q", "No.", False)]
    m = measure(rows)
    assert m == Measure(true_pos=1, false_pos=1, false_neg=1, true_neg=2)
    assert (m.precision, m.recall) == (0.5, 0.5)
    assert m.summary().startswith("precision 0.500 [0.095, 0.905] (1/2), recall 0.500")
    assert math.isnan(measure(rows, lambda texts: np.zeros(len(texts))).precision)  # none flagged


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert round(low, 4) == 0.4902 and round(high, 4) == 0.9433  # the textbook example
    assert wilson_interval(50, 50)[1] == 1.0 and round(wilson_interval(50, 50)[0], 3) == 0.929
    assert wilson_interval(0, 20)[0] == 0.0 and Measure(0, 0, 0, 5).precision_interval == (0.0, 1.0)


def test_loader_reads_comment_lines_and_quoted_newlines(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text('# dataset_version=9\nobjective,assistant_response,human_score,data_type\n'
                    'Q1,"I can\'t.\n# a line of the answer, not a comment",1,text\nQ2,Sure,0,text\n')
    assert load_labelled(path) == [LabelledAnswer("Q1", "I can't.\n# a line of the answer, not a comment", True),
                                   LabelledAnswer("Q2", "Sure", False)]
    assert refusal([r.response for r in load_labelled(path)]).tolist() == [1.0, 0.0]


def test_loader_errors_name_the_file_line_and_package(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("objective,assistant_response,human_score\nQ,A,1\nQ,B,maybe\n")
    with pytest.raises(JudgeError, match=r"set\.csv:3: human_score must be 0 or 1, got 'maybe'"):
        load_labelled(path)
    path.write_text("objective,response,human_score\nQ,A,1\n")
    with pytest.raises(JudgeError, match=r"set\.csv: columns assistant_response missing"):
        load_labelled(path)
    path.write_text("# only a comment\nobjective,assistant_response,human_score\n")
    with pytest.raises(JudgeError, match=r"set\.csv: no rows"):
        load_labelled(path)
    with pytest.raises(JudgeError, match=r"needs `pip install --no-deps nothing-here==1\.0`"):
        package_file(package="alignray_no_such_package", pip_name="nothing-here==1.0")
    with pytest.raises(JudgeError, match=r"missing from the installed alignray"):
        package_file("rewards/no_such_file.csv", package="alignray", pip_name="alignray")
