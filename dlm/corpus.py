"""A built-in corpus of short children's stories drawn from a seeded probabilistic grammar.

With no data path configured, training must still work on a fresh offline machine, so this module
writes its own English-like text: simple stories with a beginning, middle and ending, where one hero,
one friend and one object stay the same throughout a story. The words and templates are our own (no
text is copied from any dataset); the grammar is rich enough (hundreds of words, a few dozen templates)
that word-level entropy is close to real text, yet regular enough for a tiny model to learn quickly.
"""

import random
import re

# Slot pools: one option is drawn per use unless the story fixes it (see _cast).
_POOLS = {
  "cadj": "kind brave shy happy curious clever silly gentle funny friendly quiet busy sleepy cheerful"
          " young playful old wise eager lively calm".split(),
  "tadj": "red blue green yellow orange purple pink shiny old new little big pretty special striped"
          " golden silver bright".split(),
  "time": "morning afternoon day evening".split(),
  "near": ["near", "by", "next to", "close to"],
  "goodfeel": "happy glad proud excited cheerful joyful calm thankful".split(),
  "badfeel": "sad scared worried upset lonely grumpy nervous cross".split(),
  "helper": ["mom", "dad", "grandma", "grandpa", "big sister", "big brother", "aunt", "uncle"],
  "hobby": ["sing", "draw pictures", "dance", "run fast", "climb trees", "bake bread", "read stories",
            "look at the stars", "splash in puddles", "play games", "make new friends", "explore",
            "pick flowers", "build little houses", "tell jokes", "swim", "collect stones"],
  "home": ["in a cozy house by the sea", "in a little house near the woods", "in a small hole under an old tree",
           "on a quiet farm", "in a busy town", "at the edge of a big forest", "in a warm nest high in a tree",
           "in a yellow house on a hill", "in a tiny cottage with a red door", "by a slow river"],
  "critter": ["bird sang", "frog croaked", "bee buzzed", "cow mooed", "duck quacked", "owl hooted",
              "cricket chirped", "squirrel chattered", "lamb bleated", "dog barked", "butterfly fluttered"],
  "activity": ["ran in circles", "jumped over puddles", "played tag", "sang silly songs", "danced",
               "played hide and seek", "looked for bugs", "picked flowers", "built a little fort", "told funny stories",
               "chased butterflies", "counted the clouds", "rolled down the grass", "drew pictures in the dirt"],
  "food": ["some sweet berries", "warm bread", "apple pie", "cheese sandwiches", "cookies", "crunchy carrots",
           "honey cakes", "hot soup", "a bowl of plums", "fresh pears", "little muffins"],
  "smell": ["flowers", "rain", "fresh bread", "pine trees", "the sea", "warm grass", "ripe apples"],
  "lesson": ["share with friends", "ask for help", "be kind", "be patient", "tell the truth", "try again",
             "say sorry", "listen to others", "work together", "be brave"],
}
_NAMES = {
  "she": "Lily Mia Zoe Ava Ruby Nora Ivy Ella Rosie Anna Lucy Maya Emma Grace Hazel Daisy Clara Poppy".split(),
  "he": "Tim Max Ben Leo Finn Milo Theo Jack Oscar Noah Owen Eli Hugo Felix Jasper Toby Ollie Ned".split(),
  "they": "Alex Robin Kit Sky Sage Remy Jules Quinn Rowan Ari".split(),
}
# he, him, his, was: singular "they" keeps "were".
_PRONOUNS = {"she": ("she", "her", "her", "was"), "he": ("he", "him", "his", "was"),
             "they": ("they", "them", "their", "were")}
_PERSON = {"she": "girl", "he": "boy", "they": "kid"}
_ANIMALS = ("bunny fox bear cat dog owl duck mouse frog puppy kitten turtle otter squirrel hedgehog lion tiger elephant"
            " pig goat hen bee ant bird deer raccoon penguin dragon robot monkey badger beaver lamb pony").split()
# noun:verb:past, so the story can say what one does with its object.
_THINGS = [t.split(":") for t in (
  "ball:kick:kicked kite:fly:flew boat:sail:sailed book:read:read drum:play:played apple:eat:ate cake:eat:ate"
  " hat:wear:wore scarf:wear:wore wagon:pull:pulled sled:ride:rode bike:ride:rode shell:hold:held flute:play:played"
  " map:follow:followed umbrella:open:opened acorn:plant:planted seed:plant:planted puzzle:finish:finished"
  " basket:carry:carried lantern:carry:carried balloon:hold:held bell:ring:rang whistle:blow:blew marble:roll:rolled"
  " hoop:roll:rolled top:spin:spun egg:hold:held blanket:share:shared").split()]
_PLACES = {
  "park": "big tree,pond,swings,bench,slide", "forest": "tall pines,river,big rock,old log,berry bushes",
  "beach": "waves,sand castle,rocks,lighthouse,tide pools", "garden": "flowers,fence,carrot patch,apple tree,gate",
  "farm": "barn,hay,duck pond,fence,tractor", "meadow": "tall grass,daisies,hill,stream,old oak",
  "lake": "dock,water,reeds,shore,canoe", "playground": "slide,sandbox,swings,monkey bars,seesaw",
  "village": "fountain,bakery,market,bridge,well", "hill": "windmill,top,rocks,path,old gate",
}
_WEATHER = {
  "sunny": "the sun was shining", "windy": "the wind was blowing hard", "rainy": "soft rain was falling",
  "snowy": "snow covered the ground", "cloudy": "gray clouds filled the sky", "warm": "the air was soft and warm",
  "cold": "the grass was white with frost", "foggy": "thick fog hid the trees", "bright": "the sky was clear and blue",
}

_INTRO = [
  "Once upon a time, there was a {cadj} {kind} named {name}.",
  "There once was a {cadj} little {kind} called {name}.",
  "{name} was a {cadj} {kind} who lived {home}.",
  "Long ago, {home}, there lived a {cadj} {kind} named {name}.",
  "Once there was a {kind} named {name} who loved to {hobby}.",
]
# Openings that introduce the hero and the setting in one sentence.
_OPENING = [
  "One {weather} {time}, a {cadj} {kind} named {name} went to play at the {place}.",
  "Once upon a time, a {cadj} {kind} named {name} lived {near} the {place}.",
  "On a {weather} {time}, {name} the {kind} skipped all the way to the {place}.",
]
_SETTING = [
  "One {weather} {time}, {name} went to the {place}.",
  "It was a {weather} {time} at the {place}, and {detail}.",
  "On a {weather} {time}, {he} walked to the {place}, where {detail}.",
  "{name} woke up early on a {weather} day and ran out to the {place}.",
]
_TRAIT = [
  "{name} loved to {hobby} more than anything.",
  "{he} {was} very {cadj}, but sometimes {he} felt {badfeel}.",
  "Every day, {he} liked to {hobby} with {his} {helper}.",
]
_FIND = [
  "{near} the {spot}, {he} found a {tadj} {thing}.",
  "There, {name} saw a {tadj} {thing} lying {near} the {spot}.",
  "{name} had a {tadj} {thing}, and {he} wanted to {verb} it.",
  "{his} {helper} had given {him} a {tadj} {thing}, and {he} took it everywhere.",
]
_AMBIENT = [
  "A {critter} {near} the {spot}.",
  "The air smelled of {smell}, and {name} felt {goodfeel}.",
  "{he} hummed a little song as {he} walked along.",
]
_MEET = [
  "Soon, {he} met {pal}, a {cadj} {pkind} who lived {near} the {spot}.",
  "Just then, {pal} the {pkind} came by.",
  "Then {name} saw {his} friend {pal} the {pkind}.",
]
_TALK = [
  "\"Look what I have!\" said {name}. \"Do you want to {verb} it with me?\"",
  "\"What a {tadj} {thing}!\" said {pal}. \"Can I {verb} it too?\"",
  "\"Hello, {name}!\" said {pal}. \"Can I play with you?\"",
  "\"What a {tadj} {thing}!\" said {pal} with a smile.",
  "{pal} smiled and said, \"I like your {thing}, {name}.\"",
  "\"Hi, {pal}!\" said {name}. \"Let's {verb} the {thing} together.\"",
]
# Each problem comes with the solutions that make sense after it.
_TROUBLE = [
  ("But then a big gust of wind came, and the {thing} blew away.",
   ["They ran after it, and at last they found the {thing} {near} the {spot}.",
    "{pal} had a good idea, and together they got the {thing} back."]),
  ("Oh no! The {thing} got stuck high up in a tall tree.",
   ["{pal} climbed up and brought the {thing} down.",
    "They asked {his} {helper} for help, and soon the {thing} was safe again."]),
  ("But when {name} looked again, the {thing} was gone!",
   ["They looked everywhere, and at last they found it {near} the {spot}.",
    "{pal} said, \"Don't worry, I will help you.\" Soon they found it {near} the {spot}."]),
  ("{pal} wanted the {thing} too, and soon they began to argue.",
   ["Then {name} said sorry, and they took turns.", "They decided to share, and everyone felt better."]),
  ("Then dark clouds came, and big drops of rain began to fall.",
   ["They hid {near} the {spot} until the rain stopped.", "They ran home and waited for the sun to come back."]),
]
_REACT = [
  "{name} felt {badfeel}. \"What can we do?\" {he} asked.",
  "\"Oh no!\" cried {name}.",
  "{name} was {badfeel} and wanted to cry.",
]
_FUN = [
  "After that, {name} and {pal} {activity} {near} the {spot}.",
  "They {activity} until they were tired, and then they ate {food}.",
  "Later, they sat {near} the {spot} and shared {food}.",
]
_END = [
  "In the end, {name} and {pal} {past} the {thing} together until the sun went down.",
  "When it was time to go home, {name} said, \"Thank you, {pal}! This was the best day ever.\"",
  "That night, {name} went to bed with a big smile, still thinking about the {tadj} {thing}.",
  "From that day on, {name} and {pal} were the best of friends.",
  "{name} learned that it is always good to {lesson}.",
  "{he} {was} {goodfeel}, and {he} knew that tomorrow would be fun too.",
]

_SLOT = re.compile(r"\{(\w+)\}")
# Templates always write "a"; this picks "an" from the next word, so agreement holds for every slot value.
_ARTICLE = re.compile(r"\b([Aa])n? (?=([A-Za-z]))")
_SENTENCE_END = re.compile(r"[.!?]\"?(?=\s+[\"A-Z]|\s*$)")
_WORD = re.compile(r"[a-z']+")
_SENTENCES, _WORDS = (3, 9), (40, 120)


def _character(rng: random.Random, avoid: str = "") -> tuple[str, str, str]:
  pronoun = rng.choice(("she", "he", "they"))
  name = rng.choice([n for n in _NAMES[pronoun] if n != avoid])
  kind = _PERSON[pronoun] if rng.random() < 0.2 else rng.choice(_ANIMALS)
  return pronoun, name, kind


def _cast(rng: random.Random) -> dict[str, str | list[str]]:
  """The values fixed for one story, so hero, friend, object, place and weather stay consistent."""
  pronoun, name, kind = _character(rng)
  _, pal, pkind = _character(rng, avoid=name)
  he, him, his, was = _PRONOUNS[pronoun]
  thing, verb, past = rng.choice(_THINGS)
  place = rng.choice(list(_PLACES))
  weather = rng.choice(list(_WEATHER))
  return {"name": name, "kind": kind, "he": he, "him": him, "his": his, "was": was, "pal": pal, "pkind": pkind,
          "thing": thing, "verb": verb, "past": past, "tadj": rng.choice(_POOLS["tadj"]), "place": place,
          "spot": _PLACES[place].split(","), "weather": weather, "detail": _WEATHER[weather]}


def _article(match: re.Match) -> str:
  return match.group(1) + ("n " if match.group(2) in "aeiouAEIOU" else " ")


def _fill(template: str, story: dict[str, str | list[str]], rng: random.Random) -> str:
  def slot(match: re.Match) -> str:
    value = story.get(match.group(1)) or _POOLS[match.group(1)]
    return value if isinstance(value, str) else rng.choice(value)
  text = _ARTICLE.sub(_article, _SLOT.sub(slot, template))
  return text[0].upper() + text[1:]


def _plan(rng: random.Random) -> list[str]:
  """Templates for one story: opening, the find, meeting the friend, a chat and/or a problem, ending."""
  plan = [rng.choice(_OPENING)] if rng.random() < 0.4 else [rng.choice(_INTRO), rng.choice(_SETTING)]
  if rng.random() < 0.15:
    plan.append(rng.choice(_TRAIT))
  plan.append(rng.choice(_FIND))
  if rng.random() < 0.15:
    plan.append(rng.choice(_AMBIENT))
  plan.append(rng.choice(_MEET))
  # The middle is a chat, a problem, or (less often) both, so stories stay short.
  middle = rng.random()
  if middle < 0.6:
    plan.append(rng.choice(_TALK))
  if middle > 0.5:
    trouble, fixes = rng.choice(_TROUBLE)
    plan += [trouble] + ([rng.choice(_REACT)] if rng.random() < 0.3 else []) + [rng.choice(fixes)]
  if rng.random() < 0.25:
    plan.append(rng.choice(_FUN))
  # Two endings keep their list order, which reads naturally ("That night" before "From that day on").
  endings = sorted(rng.sample(range(len(_END)), 1 + (rng.random() < 0.35)))
  return plan + [_END[e] for e in endings]


def _story(seed: int, index: int) -> str:
  rng = random.Random(f"{seed}-{index}")
  while True:  # redraw the rare story that falls outside the length bounds; still depends only on (seed, index)
    story = _cast(rng)
    text = " ".join(_fill(t, story, rng) for t in _plan(rng))
    sentences, count = len(_SENTENCE_END.findall(text)), len(words(text))
    if _SENTENCES[0] <= sentences <= _SENTENCES[1] and _WORDS[0] <= count <= _WORDS[1]:
      return text


def generate_stories(num_stories: int, seed: int = 0) -> list[str]:
  """Deterministic for a given (num_stories, seed); story i is the same for any num_stories > i."""
  return [_story(seed, i) for i in range(num_stories)]


def lexicon() -> frozenset[str]:
  """Every lower-cased word the grammar can emit (words = maximal runs of letters and apostrophes)."""
  templates = _OPENING + _INTRO + _SETTING + _TRAIT + _FIND + _AMBIENT + _MEET + _TALK + _REACT + _FUN + _END
  templates += [t for trouble, fixes in _TROUBLE for t in [trouble, *fixes]]
  parts = [_SLOT.sub(" ", t) for t in templates]
  parts += [v for pool in _POOLS.values() for v in pool] + [n for names in _NAMES.values() for n in names]
  parts += [" ".join(p) for p in _PRONOUNS.values()] + list(_PERSON.values()) + _ANIMALS
  parts += [" ".join(t) for t in _THINGS] + list(_PLACES) + list(_PLACES.values())
  parts += list(_WEATHER) + list(_WEATHER.values()) + ["an"]  # "an" may come only from the article fix
  return frozenset(words(" ".join(parts)))


def words(text: str) -> list[str]:
  """Lower-cased words of a text by the same rule as lexicon() (regex [a-z']+ on text.lower()); used to check samples."""
  return _WORD.findall(text.lower())
