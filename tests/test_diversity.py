"""Diversity figures and collapse flags (alignray.rewards.diversity) on answer sets like the
degenerate policies this project produced (an emoji policy, a one-refusal collapse, evasive
non-answers) against a healthy start; a healthy different policy and a briefer but varied one
are not flagged. Pure Python: fast."""

import random

import pytest
from alignray.rewards.diversity import Diversity, collapse, diversity, tokens

# (subject, what it is, three things an answer about it mentions)
TOPICS = [
    ("sourdough bread", "Sourdough is bread leavened by a culture of wild yeast and lactic bacteria instead of packaged yeast.",
     ("a lively starter", "a long cold proof", "a very hot oven")),
    ("the water cycle", "The water cycle is the path water takes as it evaporates, condenses into clouds and falls as rain.",
     ("evaporation from the oceans", "condensation around dust", "runoff into rivers")),
    ("compound interest", "Compound interest means you earn interest on the interest already added to your balance.",
     ("the interest rate", "how often it compounds", "the number of years")),
    ("learning the guitar", "Learning the guitar is mostly about building finger strength and muscle memory over weeks.",
     ("a few open chords", "a metronome", "short daily practice")),
    ("photosynthesis", "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
     ("chlorophyll in the leaves", "the light reactions", "the Calvin cycle")),
    ("a job interview", "A job interview is a conversation where the employer checks whether your skills fit the role.",
     ("research on the company", "concrete examples of your work", "questions of your own")),
    ("training for a 5K", "Training for a 5K usually takes six to eight weeks if you start from regular walking.",
     ("run-walk intervals", "one longer run a week", "rest days")),
    ("the French Revolution", "The French Revolution began in 1789 and ended the absolute monarchy in France.",
     ("the storming of the Bastille", "the Declaration of the Rights of Man", "the Reign of Terror")),
    ("houseplants", "Most houseplants die from too much water rather than from too little.",
     ("bright indirect light", "pots with drainage holes", "letting the soil dry out")),
    ("Python lists", "A Python list is an ordered, mutable collection that can hold values of any type.",
     ("indexing from zero", "the append method", "list comprehensions")),
    ("black holes", "A black hole is a region of space where gravity is so strong that not even light escapes.",
     ("the event horizon", "the collapse of massive stars", "Hawking radiation")),
    ("budgeting", "A budget is a plan that matches the money you expect to earn with what you intend to spend.",
     ("tracking every expense", "an emergency fund", "the fifty-thirty-twenty rule")),
    ("making coffee", "Good coffee depends more on fresh beans and the right grind than on an expensive machine.",
     ("a burr grinder", "water just off the boil", "a ratio of about one to sixteen")),
    ("the immune system", "The immune system defends the body with white blood cells, antibodies and barriers like skin.",
     ("innate immunity", "memory cells", "vaccination")),
    ("writing a cover letter", "A cover letter explains why you want the job and what you would bring to the team.",
     ("one specific achievement", "the hiring manager's name", "a single page")),
    ("climate change", "Climate change is the long-term warming of the planet driven mainly by burning fossil fuels.",
     ("greenhouse gases", "rising sea levels", "renewable energy")),
    ("chess openings", "A chess opening is the first dozen or so moves, where players fight for the centre.",
     ("developing knights and bishops", "castling early", "the Italian Game")),
    ("sleep hygiene", "Sleep hygiene is the set of habits that help you fall asleep and stay asleep.",
     ("a fixed wake-up time", "a dark cool bedroom", "no screens before bed")),
    ("the Roman Empire", "The Roman Empire ruled the Mediterranean for centuries after Augustus took power in 27 BC.",
     ("its road network", "Latin as a common language", "the split into east and west")),
    ("electric cars", "Electric cars run on batteries and motors, so they have no tailpipe emissions at all.",
     ("charging at home", "range in cold weather", "regenerative braking")),
    ("meditation", "Meditation trains attention, usually by returning again and again to the breath.",
     ("ten quiet minutes", "a guided recording", "noticing thoughts without judging them")),
    ("tomato plants", "Tomatoes need full sun, steady watering and something to climb on as they grow.",
     ("deep planting", "a sturdy cage", "pinching off suckers")),
    ("machine learning", "Machine learning is a way of building programs that improve by finding patterns in data.",
     ("a clean training set", "a held-out test split", "overfitting")),
    ("public speaking", "Public speaking gets easier with rehearsal, because nerves fade once the words feel familiar.",
     ("a clear opening line", "slow deliberate breathing", "practice in front of a friend")),
    ("the moon landing", "Apollo 11 landed on the Moon in July 1969, and Neil Armstrong stepped out first.",
     ("the Saturn V rocket", "the lunar module", "the return splashdown")),
    ("bread baking at altitude", "At high altitude dough rises faster, so recipes often need less yeast and more liquid.",
     ("a shorter rise", "a slightly hotter oven", "extra flour for structure")),
    ("dog training", "Dogs learn best from short sessions with immediate rewards for the behaviour you want.",
     ("small tasty treats", "a consistent cue word", "ignoring unwanted jumping")),
    ("volcanoes", "A volcano forms where molten rock from inside the Earth reaches the surface.",
     ("tectonic plate boundaries", "pressure from dissolved gases", "lava flows and ash clouds")),
    ("learning Spanish", "Spanish is one of the easier languages for English speakers, thanks to many shared roots.",
     ("everyday vocabulary first", "podcasts for listening", "speaking with a partner early")),
    ("the stock market", "The stock market is where shares of companies are bought and sold between investors.",
     ("index funds", "diversification", "a long time horizon")),
    ("first aid for burns", "For a minor burn, cool the skin under running water for about twenty minutes.",
     ("removing rings and tight clothing", "a loose sterile dressing", "avoiding ice and butter")),
    ("the printing press", "Gutenberg's printing press, around 1450, made books far cheaper and spread literacy.",
     ("movable metal type", "oil-based ink", "the Gutenberg Bible")),
    ("composting", "Composting turns kitchen scraps and garden waste into rich soil with the help of microbes.",
     ("a mix of greens and browns", "regular turning", "keeping it damp but not wet")),
    ("SQL joins", "A SQL join combines rows from two tables based on a column they have in common.",
     ("inner joins", "left joins that keep unmatched rows", "an index on the join column")),
    ("the human heart", "The heart is a muscular pump with four chambers that pushes blood around the body.",
     ("the left ventricle", "the valves between chambers", "the heart's own electrical signal")),
    ("cycling to work", "Cycling to work saves money and builds fitness, once you have a safe route.",
     ("a good lock", "lights for dark mornings", "a change of clothes")),
    ("renting an apartment", "Before renting, read the lease carefully and check what the deposit covers.",
     ("photos of the condition at move-in", "the notice period", "who pays for repairs")),
    ("octopuses", "Octopuses are clever molluscs with three hearts and arms that can taste what they touch.",
     ("camouflage", "problem solving in the lab", "a short lifespan")),
    ("time management", "Time management is less about squeezing in more tasks and more about choosing the right ones.",
     ("a short daily list", "blocks of focused time", "saying no to low-value meetings")),
    ("making pizza dough", "Pizza dough needs strong flour, water, salt and yeast, plus time for the gluten to develop.",
     ("a long fermentation", "stretching by hand rather than rolling", "a preheated stone or steel")),
    ("knitting", "Knitting builds fabric from loops of yarn, using two needles and just two basic stitches.",
     ("chunky wool for a first scarf", "counting rows", "blocking the finished piece")),
    ("the Pythagorean theorem", "In a right triangle, the square of the hypotenuse equals the sum of the squares of the other sides.",
     ("the 3-4-5 triangle", "distances on a grid", "a proof with rearranged squares")),
    ("jet lag", "Jet lag happens when your body clock still runs on the time zone you left behind.",
     ("morning daylight", "shifting meals a day early", "short naps only")),
    ("bees", "Honeybees live in colonies of tens of thousands, with a single queen laying the eggs.",
     ("the waggle dance", "pollination of crops", "wildflower verges")),
    ("podcasting", "A podcast needs less gear than people think: a decent microphone and a quiet room go far.",
     ("a dynamic microphone", "a regular release schedule", "editing out long pauses")),
    ("the Great Wall of China", "The Great Wall is a series of fortifications built over many dynasties to guard northern borders.",
     ("the Ming dynasty sections", "rammed earth walls", "watchtowers with smoke signals")),
    ("credit scores", "A credit score sums up how reliably you have repaid borrowed money in the past.",
     ("paying on time", "keeping card balances low", "the age of your accounts")),
    ("rock climbing", "Indoor bouldering is the easiest way into climbing, since it needs only shoes and chalk.",
     ("footwork over arm strength", "falling safely onto mats", "climbing with a partner")),
    ("glaciers", "A glacier is a river of ice that forms where more snow falls each winter than melts in summer.",
     ("crevasses", "moraines of rock", "meltwater feeding rivers")),
    ("writing a short story", "A short story usually follows one character through one change, in a few thousand words.",
     ("a strong first line", "a single point of view", "cutting the first draft hard")),
    ("recycling plastic", "Only some plastics are recycled in practice, mostly bottles and tubs marked 1 and 2.",
     ("rinsing containers", "local collection rules", "buying less packaging")),
    ("the piano", "The piano is a percussion instrument in a way, since hammers strike the strings.",
     ("scales with both hands", "a steady pulse", "pieces you actually enjoy")),
    ("vitamins", "Most people get enough vitamins from a varied diet, with vitamin D the usual exception in winter.",
     ("leafy greens", "a blood test before supplements", "too much vitamin A")),
    ("Git branches", "A Git branch is a movable pointer to a commit, so you can work on changes without touching main.",
     ("small focused commits", "rebasing before a merge", "descriptive branch names")),
    ("earthquakes", "Earthquakes happen when stress along a fault is released suddenly as the rocks slip.",
     ("the moment magnitude scale", "drop, cover and hold on", "building codes")),
    ("watercolour painting", "Watercolour is transparent, so you plan the light areas first and paint from light to dark.",
     ("heavy cotton paper", "wet-on-wet washes", "leaving white paper for highlights")),
    ("negotiating a salary", "In a salary negotiation, the first number mentioned tends to anchor the whole discussion.",
     ("market data for the role", "the whole package, not just pay", "a calm pause after an offer")),
    ("the printing of money", "Central banks create money mostly electronically, not by printing notes.",
     ("interest rate decisions", "inflation targets", "bond purchases")),
    ("camping", "A first camping trip goes best at a site with toilets and water, close to the car.",
     ("a tent pitched once at home", "a warm sleeping mat", "a headlamp")),
    ("the Renaissance", "The Renaissance was a revival of classical art and learning that began in Italy around 1400.",
     ("Florence and the Medici", "linear perspective", "Leonardo and Michelangelo")),
    ("fermenting vegetables", "Lacto-fermentation preserves vegetables in salty brine, where good bacteria make them sour.",
     ("two percent salt by weight", "keeping everything under the brine", "a cool dark shelf")),
    ("solar panels", "Solar panels turn sunlight into electricity, and they still work on cloudy days, just less well.",
     ("a south-facing roof", "an inverter", "payback time")),
    ("wine tasting", "Tasting wine is about looking, smelling and then sipping slowly to notice acidity and tannin.",
     ("a clean glass", "swirling before smelling", "spitting at long tastings")),
    ("sharks", "Sharks have been around for over four hundred million years, longer than trees.",
     ("cartilage instead of bone", "electroreception", "overfishing")),
    ("home insulation", "Insulating the loft is often the cheapest way to cut a home's heating bill.",
     ("draught-proofing doors", "cavity wall insulation", "double glazing")),
    ("the Olympic Games", "The modern Olympics began in Athens in 1896, inspired by the ancient games at Olympia.",
     ("the torch relay", "host city costs", "the winter games")),
    ("cooking rice", "Rice cooks best with a measured amount of water and a lid that stays on.",
     ("rinsing off the starch", "a ratio of water to rice", "resting it off the heat")),
    ("birdwatching", "Birdwatching needs little more than binoculars and patience, and it works in any city park.",
     ("eight-power binoculars", "a regional field guide", "learning songs")),
    ("electric guitars", "An electric guitar's sound comes from magnetic pickups feeding an amplifier.",
     ("single-coil and humbucker pickups", "string gauge", "a small practice amp")),
    ("coral reefs", "Coral reefs are built by tiny animals and shelter about a quarter of all marine species.",
     ("bleaching in warm water", "reef-safe sunscreen", "marine protected areas")),
    ("tennis", "In tennis, consistency wins more points at club level than power does.",
     ("a continental grip for serves", "split steps", "the second serve")),
    ("the periodic table", "The periodic table arranges elements by atomic number, so chemical families line up in columns.",
     ("the noble gases", "electron shells", "Mendeleev's predictions")),
    ("moving house", "Moving house goes smoother when you pack one room at a time and label every box.",
     ("booking the van early", "a first-night box", "redirecting your mail")),
    ("telescopes", "For a first telescope, a small reflector on a simple mount shows a lot for the money.",
     ("aperture over magnification", "a dark sky site", "letting the optics cool")),
    ("mushrooms", "Mushrooms are the fruiting bodies of fungi whose threads spread unseen through soil or wood.",
     ("spore prints", "expert identification before eating", "growing oyster mushrooms on straw")),
]
OPENINGS = ["", "Sure! ", "Of course. ", "Good question. ", "Here is a short answer. ", "Happy to explain. ",
            "Let's see. ", "In short: ", "Great topic. ", "Here's an overview. "]
LINKS = ["Start with {a}, then think about {b}.", "Most people find that {a} matters more than {b}.",
         "The main things to know are {a} and {b}.", "Pay attention to {a}; {b} helps as well.",
         "A common mistake is to ignore {b} while focusing on {a}.", "It also helps to look into {a} and {c}.",
         "If you want to go further, read about {c}.", "Beginners often overlook {c}, which is a shame.",
         "{A} is usually the first thing people notice.", "In practice, {c} makes a bigger difference than you'd expect.",
         "Experts tend to disagree about {b}, but everyone agrees on {a}.", "Don't worry too much about {c} at first.",
         "Think of {a} as the foundation and {b} as the finishing touch.", "{A} takes patience; {c} takes practice.",
         "Many guides skip {b}, yet it explains a lot.", "A library book or a short video on {c} is a good next step.",
         "You can usually tell within a week whether {a} is working.", "Once {a} feels natural, add {b}.",
         "When something goes wrong, check {b} before anything else.", "Some people swear by {c}, others never bother.",
         "Keep notes on {a}: you will see your progress.", "{A} and {b} go together more often than not."]
CLOSINGS = ["", "", "I hope this helps!", "Let me know if you want more detail.", "Feel free to ask a follow-up.",
            "Good luck!", "Have fun with it."]


def _link(rng: random.Random, things: tuple[str, ...]) -> str:
    a, b, c = rng.sample(things, 3)
    return rng.choice(LINKS).format(a=a, b=b, c=c, A=a[0].upper() + a[1:])


def healthy(seed: int, links: int = 2, n: int = 150, opening: str | None = None, closing: str | None = None) -> list[str]:
    """Varied on-topic answers (a SmolLM2-like starting model, ~270 characters each): the first
    answer on a topic says what it is, the later ones (other questions on it) only add advice."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        _, what, things = TOPICS[i % len(TOPICS)]
        body = [what] if i < len(TOPICS) else [_link(rng, things)]
        parts = [rng.choice(OPENINGS) if opening is None else opening, *body,
                 *(_link(rng, things) for _ in range(links)), rng.choice(CLOSINGS) if closing is None else closing]
        out.append(" ".join(p.strip() for p in parts if p))
    return out


def brief(seed: int, n: int = 150) -> list[str]:
    """Shorter answers that still answer (~90 characters): one sentence, different for every prompt."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        subject, what, things = TOPICS[i % len(TOPICS)]
        out.append(what if i < len(TOPICS) else f"For {subject}: {_link(rng, things)}")
    return out


def emoji_policy(seed: int, n: int = 150) -> list[str]:
    """64-ish tokens of one repeated emoji (sometimes another, sometimes spaced)."""
    rng = random.Random(seed)
    return [(" " if rng.random() < 0.2 else "").join([rng.choice("😊😊😊🙂")] * rng.choice([48, 56, 64]))
            for _ in range(n)]


REFUSAL = "I'm sorry, but I can't help with that."


def refusal_policy(seed: int, n: int = 150) -> list[str]:
    """Nearly every prompt gets the same refusal (case and spacing vary); one in ten an answer."""
    rng = random.Random(seed)
    variants = [REFUSAL, REFUSAL + " ", "I'm sorry,  but I can't help with that.", REFUSAL.lower()]
    answers = healthy(seed, n=n)
    return [answers[i] if i % 10 == 7 else rng.choice(variants) for i in range(n)]


EVASIVE = ["I'm happy to help with {s}.", "That depends on what you mean by {s}.", "I'm not sure about {s}.",
           "Do you mean {s} in general?", "Yes, I know about {s}."]
VAGUE = [("That's a great question about {s}! There are many factors to consider, and it really depends on your"
          " situation and what you want to achieve. Everyone is different. Let me know if you have any other questions."),
         ("There are a lot of different opinions on {s}, and everyone's experience is different. It's important to"
          " do what works best for you, to stay positive, and to ask for help when you need it."),
         ("I understand you are asking about {s}. It's a complex topic with many aspects, and there is no single"
          " right answer. I'm here to help if you have more questions, so feel free to ask me anything!"),
         ("Thank you for asking about {s}. This is something many people wonder about. The answer can vary a lot,"
          " so it's best to consider your own needs and maybe talk to someone you trust."),
         ("When it comes to {s}, there are many things to think about. It's always a good idea to be careful, do"
          " some research, and take your time. I'm happy to help with anything else you need!")]
STOCK = ["I'm ready to help!", "I'm here to help.", "No, I'm not."]


def evasive_policy(seed: int, n: int = 150) -> list[str]:
    """Evasive non-answers: vague filler naming the topic (9 in 10), short dodges, and 45
    of the 150 replaced by three stock replies (30% duplicates); ~135 characters on average."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        subject = TOPICS[i % len(TOPICS)][0]
        pool = VAGUE if rng.random() < 0.9 else EVASIVE
        out.append(pool[(i // len(TOPICS) + i) % len(pool)].format(s=subject))  # a topic's two answers differ
    for k, i in enumerate(rng.sample(range(n), 45)):
        out[i] = STOCK[k % 3]
    return out


@pytest.fixture(scope="module")
def start() -> Diversity:
    return diversity(healthy(0))


def test_tokens_are_lowercase_words_and_single_symbols():
    assert tokens("I'm SURE it's 42 — ok?! 😊😊") == ["i'm", "sure", "it's", "42", "—", "ok", "?", "!", "😊", "😊"]
    assert tokens("snake_case  ") == ["snake", "_", "case"]


def test_figures_by_hand():
    d = diversity(["a b a b a b", "A  b", "a b", "x y z !"])
    # tokens: 6 + 2 + 2 + 4 = 14, distinct a b x y z ! = 6; bigrams: 5 + 1 + 1 + 3 = 10, distinct (a,b) (b,a) (x,y) (y,z) (z,!) = 5
    assert d.distinct_1 == pytest.approx(6 / 14) and d.distinct_2 == pytest.approx(5 / 10)
    # 3-grams of the first answer: aba bab aba bab -> 2 of 4 repeated; the others have none (or are too short)
    assert d.repeated_ngrams == pytest.approx((2 / 4) / 4)
    assert d.non_alpha == pytest.approx(1 / 14)  # "!" among 14 non-space characters
    assert d.identical == pytest.approx(2 / 4)  # "A  b" and "a b" after normalising
    assert d.mean_length == pytest.approx((11 + 4 + 3 + 7) / 4) and d.answers == 4
    assert diversity([]) == Diversity(0, 0, 0, 0, 0, 0, 0)
    empty = diversity(["", " "])
    assert (empty.distinct_2, empty.non_alpha, empty.identical) == (0.0, 0.0, 1.0)
    assert collapse(diversity([]), diversity(["a"])) == [] and collapse(diversity(["a"]), diversity([])) == []


def test_healthy_fixture_looks_like_a_small_instruction_model(start):
    # 150 SmolLM2-135M-Instruct answers (80 MT-Bench and 70 donotanswer prompts, T = 0.8, 96 tokens) measured
    # distinct-2 0.64, repeated 3-grams 0.06, non-letter 0.056, identical 0, 393 characters; templated answers
    # share more word pairs
    assert 240 <= start.mean_length <= 300 and start.identical == 0
    assert 0.3 <= start.distinct_2 <= 0.8 and start.repeated_ngrams < 0.1 and start.non_alpha < 0.06


def reasons_of(answers: list[str], start: Diversity) -> set[str]:
    return {r.split(" fell ")[0].split(" rose ")[0] for r in collapse(diversity(answers), start)}


def test_the_emoji_policy_is_flagged(start):
    d = diversity(emoji_policy(1))
    assert d.non_alpha == 1.0 and d.repeated_ngrams > 0.95 and d.distinct_2 < 0.01
    assert reasons_of(emoji_policy(1), start) == {"distinct-2", "repeated 3-grams", "non-letter characters",
                                                  "identical answers"}


def test_the_one_refusal_collapse_is_flagged(start):
    d = diversity(refusal_policy(1))
    assert d.identical == pytest.approx(0.9) and d.mean_length < 70
    # the one answer in ten that is real keeps distinct-2 above a third of the start's: equal answers flag it
    assert reasons_of(refusal_policy(1), start) == {"identical answers"}


def test_evasive_non_answers_are_flagged(start):
    answers = evasive_policy(1)
    d = diversity(answers)
    assert d.identical == pytest.approx(0.3) and 120 <= d.mean_length <= 150 and d.distinct_2 < 0.15
    assert reasons_of(answers, start) == {"distinct-2", "identical answers"}


def test_a_healthy_different_policy_and_a_briefer_one_are_not_flagged(start):
    chatty = healthy(1, links=3, opening="Great question!", closing="Let me know if you have any other questions.")
    for answers in (healthy(1), chatty, brief(1)):
        assert collapse(diversity(answers), start) == [], diversity(answers)
    assert diversity(brief(1)).mean_length < start.mean_length / 2 < diversity(chatty).mean_length
    # relative, not absolute: the degenerate sets compared with themselves are not flagged either
    for answers in (emoji_policy(1), refusal_policy(1), evasive_policy(1)):
        assert collapse(diversity(answers), diversity(answers)) == []
