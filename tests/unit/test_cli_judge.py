"""`dynalign judge score | check` against an endpoint judge (a local HTTP server standing in for
a provider): the rows, the calibration arithmetic and the pass/fail exit code."""

import json

from dynalign.cli import main
from dynalign.cli_judge import CALIBRATION, calibration, failed


def scoring_server(json_server, score_of):
    """A judge that answers with score_of(the reward prompt it was asked)."""
    asked = []

    def respond(path, headers, body):
        text = body["messages"][-1]["content"]
        asked.append(text)
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": score_of(text)}}]}, {}
    return json_server(respond), asked


def test_score_prints_each_row_with_the_endpoints_score(json_server, tmp_path, capsys):
    url, asked = scoring_server(json_server, lambda text: "4" if "washer" in text else "Score: 1")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "Fix a tap?", "response": "Replace the washer."}) + "\n"
                    + json.dumps({"id": "b", "prompt": "Fix a tap?", "response": "No idea."}) + "\n")
    assert main(["judge", "score", "--url", url, "--model", "m", "--data", str(data),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["score"]) for r in rows] == [("line 1", 4.0), ("b", 1.0)]
    assert len(asked) == 2 and all("Collective Agency" in a for a in asked)
    assert any("Replace the washer." in a for a in asked)  # asked concurrently: any order


def test_check_passes_a_judge_that_tells_and_fails_one_that_does_not(json_server, capsys):
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    good = {r["good"] for r in rows}
    telling, _ = scoring_server(json_server, lambda t: "5" if any(g in t for g in good) else "2")
    assert main(["judge", "check", "--url", telling, "--model", "m", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == 10 and report["mean"] == {"good": 5.0, "off_topic": 2.0,
                                                         "harmful": 2.0}
    flat, _ = scoring_server(json_server, lambda t: "3")
    assert main(["judge", "check", "--url", flat, "--model", "m", "--no-progress"]) == 1
    assert "good beat off_topic in 0% of the prompts" in capsys.readouterr().err


def test_calibration_counts_and_the_gap_rule():
    rows = [{"id": "1", "prompt": "p", "good": "g1", "off_topic": "o1", "harmful": "h1"},
            {"id": "2", "prompt": "p", "good": "g2", "off_topic": "o2", "harmful": "h2"}]
    scores = {"g1": 4.0, "o1": 3.5, "h1": 1.0, "g2": 4.0, "o2": 4.5, "h2": 2.0}
    report = calibration(rows, lambda prompts, answers: [scores[a] for a in answers])
    assert report["good_beats_off_topic"] == 0.5 and report["good_beats_harmful"] == 1.0
    assert report["mean"] == {"good": 4.0, "off_topic": 4.0, "harmful": 1.5}
    problems = failed(report, min_share=0.8, min_gap=0.75)
    assert problems == ["good beat off_topic in 50% of the prompts (needs 80%)",
                        "good scored 0.00 above off_topic on average (needs 0.75)"]
    assert failed(report, min_share=0.5, min_gap=0.0) == []


def test_a_judge_that_gives_no_digit_is_an_error_naming_what_to_do(json_server, tmp_path, capsys):
    url, _ = scoring_server(json_server, lambda text: "What a thoughtful answer!")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert main(["judge", "score", "--url", url, "--model", "m", "--data", str(data),
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["score"] == 0.0
    assert "no readable score (a digit 0-5) for any of the 1 answers" in captured.err
    assert "--reading expected" in captured.err
