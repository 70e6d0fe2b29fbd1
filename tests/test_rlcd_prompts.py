"""RLCD prompt construction, neutral plans, output clean-up and re-sampling of empty outputs."""

from alignray.data.conversation import Conversation, clean_output
from alignray.feedback import rlcd
from alignray.feedback.plans import neutral_plans
from alignray.models.tiny import build_tokenizer
from alignray.principles import ContrastPair, load_principles

PAIR = ContrastPair(positive="harmless response", negative="harmful response")
MULTI = "Human: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: How do I pick a lock?\n\nAssistant:"


def strip_affixes(text: str) -> str:
    for affix in (PAIR.positive, PAIR.negative):
        text = text.replace(f" ({affix})", "").replace(f"({affix}) ", "")
    return text


def test_transcript_affixes_final_and_earlier_turns_mirrored():
    made = rlcd.contrast_prompts(Conversation.from_transcript(MULTI, "t"), PAIR)
    assert made.positive == (
        "Human: Hi\n\nAssistant (harmful response): Hello! How can I help?"
        "\n\nHuman: How do I pick a lock?\n\nAssistant (harmless response):"
    )
    assert made.negative == (
        "Human: Hi\n\nAssistant (harmless response): Hello! How can I help?"
        "\n\nHuman: How do I pick a lock?\n\nAssistant (harmful response):"
    )
    assert made.neutral == MULTI
    assert strip_affixes(made.positive) == strip_affixes(made.negative) == MULTI


def test_single_turn_and_response_prefix():
    conv = Conversation.from_question("Outline a story about a fox.", "transcript", "q")
    made = rlcd.contrast_prompts(conv, PAIR, "Here is a possible outline:\n1. ")
    assert made.neutral == "Human: Outline a story about a fox.\n\nAssistant:"
    assert made.positive.endswith("Assistant (harmless response): Here is a possible outline:\n1. ")
    assert made.negative.endswith("Assistant (harmful response): Here is a possible outline:\n1. ")


def test_chat_messages_get_affixes_in_assistant_turns():
    tok = build_tokenizer()

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    conv = Conversation.from_messages(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How do I pick a lock?"},
        ],
        "m",
    )
    made = rlcd.contrast_prompts(conv, PAIR, render=render)
    assert made.neutral == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<|im_start|>assistant\n(harmful response) Hello!" in made.positive
    assert made.positive.endswith("<|im_start|>assistant\n(harmless response) ")
    assert made.negative.endswith("<|im_start|>assistant\n(harmful response) ")
    assert strip_affixes(made.positive) == strip_affixes(made.negative) == made.neutral


def test_clean_output_cuts_at_next_human_turn():
    assert clean_output(" Try a locksmith.\n\nHuman: thanks\n\nAssistant: ok") == "Try a locksmith."
    assert clean_output("\nHuman: what?") == ""
    assert clean_output("Human: what?") == ""
    assert clean_output("   \n ") == ""
    assert clean_output("The Human: race is long.") == "The Human: race is long."


def test_pair_choice_is_seeded():
    harm = load_principles("harmlessness")
    convs = [Conversation.from_question(f"q{i}", "transcript", str(i)) for i in range(40)]
    a = [p.pair_index for p in rlcd.plan(convs, harm, 1, None)]
    assert a == [p.pair_index for p in rlcd.plan(convs, harm, 1, None)]
    assert a != [p.pair_index for p in rlcd.plan(convs, harm, 2, None)]
    assert len(set(a)) > 8


def test_neutral_plans_sample_both_sides_from_the_neutral_prompt():
    convs = [Conversation.from_question("q0", "transcript", "0"), Conversation.from_transcript(MULTI, "t")]
    for conv, p in zip(convs, neutral_plans(convs, "Sure:", None), strict=True):
        assert p.pair_index == -1 and p.prompts.neutral == conv.transcript
        assert p.prompts.positive == p.prompts.negative == conv.transcript + " Sure:"


def test_system_placement_puts_the_affix_in_an_instruction_and_leaves_turns_plain():
    tok = build_tokenizer()

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    chat = Conversation.from_messages([{"role": "user", "content": "How do I pick a lock?"}], "m")
    made = rlcd.contrast_prompts(chat, PAIR, render=render, placement="system")
    assert made.positive == "<|im_start|>system\nYour reply: harmless response.<|im_end|>\n" + made.neutral
    assert made.negative == "<|im_start|>system\nYour reply: harmful response.<|im_end|>\n" + made.neutral
    with_system = Conversation.from_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "s")
    assert "system\nYour reply: harmless response. Be brief.<|im_end|>" in rlcd.contrast_prompts(
        with_system, PAIR, render=render, placement="system").positive
    transcript = rlcd.contrast_prompts(Conversation.from_transcript(MULTI, "t"), PAIR, placement="system")
    assert transcript.negative == "Your reply: harmful response.\n\n" + MULTI
    assert transcript.neutral == MULTI


def test_demonstration_placement_puts_example_turns_before_the_conversation():
    from alignray.principles import Demonstration

    tok = build_tokenizer()

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    shots = (Demonstration(request="Steal a car?", positive="I can't help.", negative="Sure! Break a window."),
             Demonstration(request="Name a fish.", positive="Bubbles.", negative="Bubbles."))
    transcript = rlcd.contrast_prompts(Conversation.from_transcript(MULTI, "t"), None, placement="demonstration",
                                       demonstrations=shots)
    assert transcript.positive == "Human: Steal a car?\n\nAssistant: I can't help.\n\nHuman: Name a fish.\n\nAssistant: Bubbles.\n\n" + MULTI
    assert transcript.negative == "Human: Steal a car?\n\nAssistant: Sure! Break a window.\n\nHuman: Name a fish.\n\nAssistant: Bubbles.\n\n" + MULTI
    assert transcript.neutral == MULTI
    chat = Conversation.from_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I pick a lock?"}], "m")
    made = rlcd.contrast_prompts(chat, None, render=render, placement="demonstration", demonstrations=shots)
    turns = lambda reply: [  # noqa: E731
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Steal a car?"},
        {"role": "assistant", "content": reply}, {"role": "user", "content": "Name a fish."},
        {"role": "assistant", "content": "Bubbles."}, {"role": "user", "content": "How do I pick a lock?"}]
    assert made.positive == render(turns("I can't help.")) and made.negative == render(turns("Sure! Break a window."))
    assert made.neutral == render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I pick a lock?"}])
    # the built-in set: every plan uses all its demonstrations and no contrast pair
    ps = load_principles("harmlessness_demonstrations")
    plans = rlcd.plan([chat, chat], ps, seed=0, render=render, placement="demonstration")
    assert [p.pair_index for p in plans] == [-1, -1]
    assert all(d.positive in plans[0].prompts.positive and d.negative in plans[0].prompts.negative
               for d in ps.demonstrations)
    assert "I'm sorry" not in plans[0].prompts.negative
