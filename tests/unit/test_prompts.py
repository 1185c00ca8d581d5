"""The paper's prompts: verbatim defaults, and placeholders filled in the right order."""

import pytest

from dynalign import prompts
from dynalign.config import load_config


def test_defaults_are_the_papers_text():
    assert prompts.INSTRUCTION.startswith("our task is to generate a #Task Prompt#")
    assert prompts.CRITERIA.splitlines()[0] == "- The task’s goal is to [goal]"
    assert prompts.CRITERIA.splitlines()[-1] == "- The length is within 100 words."
    assert 'ends your answer with "In conclusion, this task prompt is: X."' in prompts.FEEDBACK
    assert prompts.REWARD.endswith("Try to provide a concise answer.")
    assert "- Vitality: the ability to renew, grow, and endure." in prompts.CA_DEFINITION


@pytest.mark.parametrize("name, marks", [
    ("INSTRUCTION", ["[Predefined criteria]"]),
    ("FEEDBACK", ["[Definition of CA]", "[Predefined criteria]", "[Response]",
                  "[Generated prompt]"]),
    ("REFINEMENT", ["[Predefined criteria]", "[Generated prompt]", "[Critique]"]),
    ("SYSTEM", ["[Definition of CA]"]),
    ("REWARD", ["[Definition of CA]", "[Prompt]", "[Response]"]),
])
def test_templates_carry_their_placeholders(name, marks):
    text = getattr(prompts, name)
    for mark in marks:
        assert text.count(mark) == 1, mark


def test_fill_puts_the_goal_inside_the_criteria():
    criteria = prompts.fill(prompts.CRITERIA, goal=prompts.goal_clause("Plan a family trip."))
    text = prompts.fill(prompts.INSTRUCTION, criteria=criteria)
    assert "- The task’s goal is to plan a family trip\n" in text
    assert "[" not in text.replace("(e.g.", "")


def test_fill_rejects_an_unknown_placeholder_name():
    with pytest.raises(KeyError):
        prompts.fill("x", answer="y")


@pytest.mark.parametrize("goal, clause", [
    ("Plan a family vacation itinerary", "plan a family vacation itinerary"),
    ("  Choose a school for my son. ", "choose a school for my son"),
    ("NGO budget for next year", "NGO budget for next year"),
])
def test_goal_clause(goal, clause):
    assert prompts.goal_clause(goal) == clause


def test_config_defaults_are_the_prompts_and_can_be_replaced(tmp_path):
    assert load_config().prompts.reward == prompts.REWARD
    (tmp_path / "c.toml").write_text('[prompts]\ngoal = "Name one errand."\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.prompts.goal == "Name one errand."
    assert cfg.prompts.feedback == prompts.FEEDBACK


@pytest.mark.parametrize("name", list(prompts.ASPECTS))
def test_an_aspect_prompt_is_the_reward_frame_with_its_own_definition_and_rubric(name):
    text = prompts.aspect_template(prompts.ASPECT, name)
    definition, rubric = prompts.ASPECTS[name]
    assert f"- {name.title()}: {definition}" in prompts.CA_DEFINITION  # the paper's words
    assert f"is {name.title()}: {definition}" in text and rubric in text
    assert [line[:4] for line in rubric.splitlines()] == [f"- {d}:" for d in range(6)]
    for mark in ("[Definition of CA]", "[Prompt]", "[Response]"):  # left to the reward
        assert text.count(mark) == 1, mark
    assert "[Aspect" not in text
    assert text.endswith(prompts.REWARD.split("Output format")[1])  # the same answer format
