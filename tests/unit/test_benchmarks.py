"""Capability benchmarks: math and multiple-choice exact match, IFEval with lm-eval's checkers."""

import json
import subprocess
import sys
import zipfile

import pytest

from dynalign import exact, ifeval
from dynalign.errors import DataError

# One reply per row of data/eval/ifeval_sample.jsonl that follows every instruction.
FOLLOWING = {
    1001: "Hi Sam! I am away next week. Could you water my tomato plants every evening? Thanks.",
    1002: "Gears change how far the wheel turns for each push of the pedals. A low gear asks "
          "for less force per turn so your legs can keep spinning up a steep slope.",
    1003: "* More working families could visit.\n* Students could study before Monday tests.\n"
          "* Volunteers could run weekend reading clubs.",
    1004: "bread goes stale because the starch in it slowly crystallises and pushes water out. "
          "the crumb dries and turns firm.",
    1005: "This insulated bottle keeps drinks cold all day. Its leakproof lid means no spills.",
    1006: "Start with one ball. Practise throwing at eye height. Add the third ball last. "
          "Any other questions?",
    1007: "<<The Quiet Light>>\nHe trims the wick each evening,\nthe sea lies flat and grey,\n"
          "he waits for waves that never come,\nand writes them down anyway.",
    1008: '"The sun warms the sea and water rises as vapour. It cools into clouds. Then it '
          'falls as rain and flows back to the sea."',
    1009: "Hi team,\nJoin us for a picnic in the park next Friday at noon.\nBest,\nAlex\n"
          "P.S. Bring a blanket!",
    1010: "YOU HAVE WORKED HARD ALL YEAR. GET SOME SLEEP, BREATHE, AND TRUST WHAT YOU KNOW!",
    1011: "*Weather* is what the sky does today. *Climate* is the pattern over thirty years.",
    1012: "SECTION 1\nIngredients: [number of eggs] eggs and a knob of butter.\n"
          "SECTION 2\nWhisk, pour into a hot pan and fold after [minutes] minutes.",
    1013: "Wake up before the children and drink a glass of water. Stretch for five minutes."
          "\n\n***\n\nMake breakfast together. Leave the phone in another room.",
    1014: '```json\n{"planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", '
          '"Uranus", "Neptune"], "moons": {"Mercury": 0, "Venus": 0, "Earth": 1, "Mars": 2}}\n```',
    1015: 'Green leaves calm a busy room. A green corner gives the eye somewhere to rest, and caring for something green each morning is a small daily win.',
    1016: 'Fresh bread, warm hearts, right around the corner.',
    1017: "Ma saison préférée est l'automne. Les feuilles deviennent rouges et dorées dans les forêts. J'aime marcher dans le parc avec une tasse de chocolat chaud.",
    1018: 'Sleep gives the brain time to sort the day. During deep sleep new memories are replayed. That replay moves them into longer storage. Without it, facts learned today fade faster.',
    1019: "A red umbrella was left on the number 9 bus.\n\nRain began to fall and a child picked it up to stay dry.\n\nShe saw the owner's name inside and carried it back to his door.",
    1020: 'My answer is maybe.',
    1021: 'Captain Cardboard\n******\nBoxer',
    1022: 'Write a haiku about a morning bus ride.\nFogged window, warm seat\nthe city wakes stop by stop\ncoffee in both hands',
    1023: 'We are ONE goal down, not out. Keep the ball, trust each other, and FIGHT for every yard. This half is OURS.',
    1024: 'Join one club in your first month. Learn the bus routes early. Say yes to invitations. Is there anything else I can help with?',
    1025: '<<Roots in Common>>\nFriends, today this empty lot becomes a garden. Every bed here was dug by a neighbour, every path laid by volunteers. May it feed our families, teach our children where food comes from, and give all of us a reason to meet and talk.',
    1026: 'Dear driver, thank you for your patience this morning. Your kindness got me to my interview on time.\nP.P.S I got the job!',
    1027: 'a budget is a plan for what you earn and what you spend. you write down your income, then decide how much goes to needs, fun and savings before the month starts.',
    1028: '* Two litres of water.\n* A rain jacket.\n* Snacks with salt and sugar.\n* A charged phone and a paper map.',
    1029: '"It smells sharp and earthy, like warm stone. Some call it petrichor."',
    1030: '```json\n{"Monday": "8:00-16:00", "Tuesday": "8:00-16:00", "Wednesday": "8:00-14:00"}\n```',
    1031: "LOST: [pet's name], a [colour] [breed]. Last seen near [street]. Please call [phone number].",
    1032: "Section 1\nBuild a blanket fort in the living room.\nSection 2\nRead a story inside it with a torch.\nSection 3\nDraw a map of the fort's secret rooms.",
    1033: 'The gate looked enormous that morning.\n\n***\n\nBy lunch I had found a friend who also liked drawing.\n\n***\n\nAt home I could not stop talking about it.',
    1034: '*Time*: door to door they are often equal. *Cost*: trains are usually cheaper when booked early. *Comfort*: trains let you walk and work.',
    1035: 'PLEASE TAKE A SHOWER BEFORE YOU GO INTO THE POOL. THIS KEEPS THE WATER CLEAN AND SAFE FOR EVERYONE WHO SWIMS HERE.',
    1036: 'The river turns copper as the sun drops. Ducks settle in the reeds and the path grows quiet. By the bridge the river mirrors the first streetlights.',
    1037: 'Sprich jeden Tag ein paar Minuten mit anderen Menschen. Lies kurze Geschichten und schreibe neue Wörter in ein kleines Heft.',
    1038: 'Bees carry pollen from flower to flower, and many crops only set fruit when that happens. Apples, almonds, berries and squash all depend on it. Without bees farmers would harvest far less, pay for hand pollination, or rent hives at high prices. Healthy wild bees also keep hedgerows and meadows alive around the fields.',
    1039: '<<Small Switches>>\n* Turn the thermostat down one degree.\n* Wash clothes at thirty degrees.',
    1040: 'Sunday is the one day I am not in a hurry. I put on music and try a new recipe. The whole flat smells good by evening.',
}


@pytest.mark.parametrize("text, answer", [
    ("so the total is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{\\frac{a}{b}}} and later \\boxed{3}", "3"),
    ("first \\boxed{3}, then cut off \\boxed{\\frac{4", "3"),
    ("So 12 * 7 = 84 and 84 - 50 = 34 muffins remain.", "34"),
    ("The final answer is **1,234**.", "1,234"),
    ("Answer: 3/4 of the cake", "3/4"),
    ("It comes to -2.5 degrees", "-2.5"),
    ("I do not know.", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, answer):
    assert exact.extract_answer(text) == answer


@pytest.mark.parametrize("pred, gold, same", [
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{2}{3}", "2/3", True),
    ("\\frac23", "\\frac{2}{3}", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("$2,234$.", "2234", True),
    ("5 \\text{ cm}", "5", True),
    ("x = 3", "3", True),
    ("80.0", "80", True),
    ("\\left(1,2\\right)", "(1, 2)", True),
    ("0.33", "1/3", False),
    ("35", "34", False),
    (None, "34", False),
])
def test_same_answer(pred, gold, same):
    assert exact.same_answer(pred, gold) is same


def test_math_sample_loads_and_scores():
    rows = exact.load_math(exact.DATA_DIR / "math_sample.jsonl")
    assert [row["answer"] for row in rows][:2] == ["42", "34"]  # GSM8K: what follows ####
    assert rows[4]["answer"] == "80" and "\\boxed{}" in rows[0]["messages"][0]["content"]
    replies = ["17 + 25 = 42, so \\boxed{42}.", "#### 34", "Each gets \\boxed{\\dfrac{2}{3}}",
               "The answer is 2234.", "81 - 1 = 79", "no idea"]
    result = exact.score_math(rows, replies)
    assert (result["n"], result["correct"], result["unreadable"]) == (6, 4, 1)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["items"][4] == {"id": "int-1", "gold": "80", "extracted": "79",
                                  "correct": False}
    assert len(exact.load_math(exact.DATA_DIR / "math_sample.jsonl", limit=2)) == 2


@pytest.mark.parametrize("text, letter", [
    ("Answer: C", "C"),
    ("Spiders are arachnids.\nThe answer is (B).", "B"),
    ("Answer: A\nOn reflection, the answer is **D**", "D"),
    ("Final answer: $\\boxed{B}$", "B"),
    ("Thinking it over...\n**C**", "C"),
    ("(A) is wrong, (B) is right", "B"),
    ("A) ten\nB) four", None),
    ("I am not sure.", None),
    (None, None),
])
def test_extract_choice(text, letter):
    assert exact.extract_choice(text) == letter


def test_mc_shuffle_is_seeded_and_tracks_the_correct_answer():
    path = exact.DATA_DIR / "mc_sample.csv"
    rows = exact.load_mc(path)
    assert rows == exact.load_mc(path)
    assert exact.load_mc(path, limit=2) == rows[:2]
    for row, correct in zip(rows, ["8", "Mercury", "100", "13", "Carbon dioxide"]):
        assert row["options"][row["answer"]] == correct
        assert f"{row['answer']}) {correct}\n" in row["messages"][0]["content"] + "\n"
    other = exact.load_mc(path, seed=1)
    assert [r["options"] for r in other] != [r["options"] for r in rows]
    assert all(r["options"][r["answer"]] == s["options"][s["answer"]] for r, s in zip(rows, other))
    assert len({row["answer"] for row in rows}) > 1


def test_mc_scores():
    rows = exact.load_mc(exact.DATA_DIR / "mc_sample.csv")
    replies = [f"Answer: {rows[0]['answer']}", "Answer: E", None,
               f"({rows[3]['answer']})", "Answer: " + ("A" if rows[4]["answer"] != "A" else "B")]
    result = exact.score_mc(rows, replies)
    assert (result["n"], result["correct"], result["unreadable"]) == (5, 2, 2)
    assert result["items"][0] == {"id": "mc-1", "gold": rows[0]["answer"],
                                  "extracted": rows[0]["answer"], "correct": True}


def test_load_errors_name_the_line(tmp_path):
    math = tmp_path / "math.jsonl"
    math.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?"}\n')
    with pytest.raises(DataError, match=r"math.jsonl:3: missing key: answer"):
        exact.load_math(math)
    math.write_text('{"problem": "1+1?", "answer": 2}\nnot json\n')
    with pytest.raises(DataError, match=r"math.jsonl:2: not JSON"):
        exact.load_math(math)
    mc = tmp_path / "mc.csv"
    mc.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2\nq,a,b,c\n")
    with pytest.raises(DataError, match=r"mc.csv:1: no column 'Incorrect Answer 3'"):
        exact.load_mc(mc)
    mc.write_text((exact.DATA_DIR / "mc_sample.csv").read_text() + 'q6,"Two\nlines",a,b,c,\n')
    with pytest.raises(DataError, match=r"mc.csv:8: empty 'Incorrect Answer 3'"):
        exact.load_mc(mc)
    with pytest.raises(DataError, match="no such"):
        exact.load_math(tmp_path / "absent.jsonl")


def test_ifeval_sample_loads():
    rows = ifeval.load_ifeval(ifeval.SAMPLE_FILE)
    assert len(rows) == len(FOLLOWING) == len({row["key"] for row in rows})
    assert rows[0]["messages"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert len({i for row in rows for i in row["instruction_id_list"]}) >= 15
    assert len(ifeval.load_ifeval(ifeval.SAMPLE_FILE, limit=3)) == 3


def test_ifeval_scores_following_and_breaking_replies():
    rows = ifeval.load_ifeval(ifeval.SAMPLE_FILE)
    result = ifeval.score_ifeval(rows, [FOLLOWING[row["key"]] for row in rows])
    assert [item["key"] for item in result["items"] if not all(item["follow_strict"])] == []
    assert result["prompt_strict"] == result["instruction_loose"] == 1.0
    assert result["n_prompts"] == 40 and result["n_instructions"] == 52
    broken = {**FOLLOWING, 1001: "Hi Sam, please water my tomatoes. Thanks, Alex",
              1011: "*Weather* is today's temperature. *Climate* is decades."}
    result = ifeval.score_ifeval(rows, [broken[row["key"]] for row in rows])
    assert result["prompt_strict"] == result["prompt_loose"] == 38 / 40
    assert result["instruction_strict"] == 50 / 52
    assert result["items"][10]["follow_strict"] == [True, False]


def test_ifeval_loose_forgives_a_first_line_and_markdown():
    rows = [row for row in ifeval.load_ifeval(ifeval.SAMPLE_FILE) if row["key"] in (1004, 1006)]
    replies = ["Sure! Here is why:\n" + FOLLOWING[1004], FOLLOWING[1006] + "**"]
    result = ifeval.score_ifeval(rows, replies)
    assert [item["follow_strict"] for item in result["items"]] == [[False], [False]]
    assert [item["follow_loose"] for item in result["items"]] == [[True], [True]]
    assert (result["prompt_strict"], result["prompt_loose"]) == (0.0, 1.0)
    assert ifeval.score_ifeval(rows, ["", None])["instruction_loose"] == 0.0


@pytest.mark.parametrize("line, message", [
    ('{"key": "1", "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], '
     '"kwargs": [{}]}', "key must be an integer"),
    ('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_colon"], '
     '"kwargs": [{}]}', "unknown instruction id 'punctuation:no_colon'"),
    ('{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], '
     '"kwargs": []}', "one object per instruction"),
    ('{"key": 1, "prompt": "p", "instruction_id_list": ["length_constraints:number_words"], '
     '"kwargs": [{"num_word": 5}]}', "takes no argument 'num_word'"),
])
def test_ifeval_load_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "if.jsonl"
    path.write_text(ifeval.SAMPLE_FILE.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"if.jsonl:2: .*{message}"):
        ifeval.load_ifeval(path)


def test_ifeval_without_punkt_says_how_to_get_it(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(DataError, match="make eval-data"):
        ifeval.load_ifeval(ifeval.SAMPLE_FILE)


def test_extract_punkt_from_a_wheel(tmp_path):
    wheel = tmp_path / "llama_index_core-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in ("README", "english/collocations.tab", "english/sent_starters.txt",
                     "czech/collocations.tab"):
            z.writestr(ifeval.PUNKT_IN_WHEEL + name, name)
        z.writestr("llama_index/core/__init__.py", "")
    dest = tmp_path / "nltk_data"
    run = [sys.executable, "-m", "dynalign.ifeval", "install-punkt", "--wheel", str(wheel),
           "--dest", str(dest)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert found == ["tokenizers/punkt_tab/README", "tokenizers/punkt_tab/english/collocations.tab",
                     "tokenizers/punkt_tab/english/sent_starters.txt"]
    with pytest.raises(DataError, match="not a zip"):
        ifeval.extract_punkt(tmp_path / "absent.whl", dest)


def test_importing_the_benchmarks_stays_light():
    code = ("import sys, json, dynalign.exact, dynalign.ifeval; print(json.dumps([m for m in "
            "('lm_eval', 'torch', 'nltk', 'langdetect', 'vllm', 'gradio') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
