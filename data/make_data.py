"""Generate the bundled MER-Caption+-style data set (text rendering of video, audio and subtitle clues).

    python data/make_data.py            # writes data/{train,test_fine,test_basic,test_sentiment,dev_fine}.jsonl

Seeded and deterministic: the same command always writes the same files. See data/README.md.
"""
import json
import os
import random

SEED = 1234
# dev_fine (for tuning, never a test) comes last, drawn after the others, so they stay as first written
SPLITS = {"train": 3200, "test_fine": 300, "test_basic": 300, "test_sentiment": 300, "dev_fine": 300}
OUT_DIR = os.path.dirname(os.path.abspath(__file__))

# Each emotion: fine-grained words (the first is the most typical), visual and acoustic clues,
# subtitles, the MER basic label and the valence.
EMOTIONS = {
    "happy": dict(
        words=["happy", "joyful", "excited", "delighted", "cheerful", "amused", "grateful", "relieved", "proud"],
        face=["smiles broadly", "laughs with bright eyes", "grins and nods quickly", "claps and beams at the others",
              "raises both arms with a wide smile"],
        voice=["a bright, lively tone", "a quick, rising pitch with laughter", "a warm voice and a chuckle",
               "an energetic, loud and cheerful voice"],
        lines=["I can't believe we actually won!", "This is the best news I've heard all year.",
               "Thank you so much, this means a lot to me.", "We finally did it, everything worked out.",
               "You remembered my birthday? That's so sweet.", "Pack your bags, we're going to the sea!",
               "She said yes! Can you believe it?", "Dinner is on me tonight, I got the promotion."],
        basic="happy", valence=1),
    "sad": dict(
        words=["sad", "disappointed", "lonely", "hopeless", "hurt", "heartbroken", "gloomy", "guilty"],
        face=["keeps the eyes lowered", "wipes away tears", "sits with slumped shoulders", "stares blankly at the floor",
              "covers the face with both hands"],
        voice=["a slow, low voice", "a voice that breaks mid-sentence", "long sighs between words",
               "a quiet, trembling and tired voice"],
        lines=["I thought he would come back, but he never did.", "Nobody even noticed I was gone.",
               "I tried so hard and it still wasn't enough.", "It's my fault, I should have been there.",
               "The house feels so empty without her.", "I guess I'm just not good enough for them.",
               "We sold the old piano today.", "He didn't even call on my birthday."],
        basic="sad", valence=-1),
    "angry": dict(
        words=["angry", "furious", "annoyed", "frustrated", "irritated", "resentful", "indignant"],
        face=["frowns hard with a clenched jaw", "points a finger at the other person", "slams a hand on the table",
              "glares with narrowed eyes", "turns red and leans forward"],
        voice=["a loud, sharp voice", "shouting with clipped words", "a harsh, rising tone",
               "fast, forceful speech through gritted teeth"],
        lines=["How many times do I have to tell you?", "You lied to me again!", "Don't you dare walk away from me.",
               "This is completely unacceptable.", "Who gave you the right to read my messages?",
               "I waited three hours and you didn't even text.", "Stop touching my things!",
               "You always take the credit for my work."],
        basic="angry", valence=-1),
    "worried": dict(
        words=["worried", "anxious", "nervous", "scared", "tense", "uneasy"],
        face=["glances around the room", "bites the lip and fidgets", "grips the chair tightly",
              "paces back and forth", "keeps checking the phone"],
        voice=["a trembling, hesitant voice", "fast, shallow breathing between words", "a hushed, shaky tone",
               "stammering and repeating words"],
        lines=["What if they find out what happened?", "I don't know if I can do this.",
               "Did you hear that noise outside?", "The results come out tomorrow and I can't sleep.",
               "He should have been home two hours ago.", "Are you sure the bridge will hold?",
               "Please tell me the doctor said it's nothing.", "I have to speak in front of everyone."],
        basic="worried", valence=-1),
    "surprised": dict(
        words=["surprised", "astonished", "amazed", "shocked", "startled"],
        face=["eyes widen and the mouth falls open", "steps back suddenly", "freezes with raised eyebrows",
              "drops what they were holding"],
        voice=["a sudden gasp", "a high, abrupt exclamation", "a sharp intake of breath and a pause",
               "a voice that jumps in pitch"],
        lines=["Wait, you're telling me she's here?", "No way, when did this happen?",
               "I had no idea you could do that!", "You mean the whole thing was planned?",
               "Is that really you after all these years?", "Hold on, the bill says how much?"],
        basic="surprise", valence=0),
    "disgusted": dict(
        words=["disgusted", "contemptuous", "revolted"],
        face=["wrinkles the nose and turns away", "curls the upper lip", "pushes the plate away",
              "rolls the eyes and shakes the head"],
        voice=["a scornful snort", "a flat, dismissive tone", "a drawn-out, mocking voice"],
        lines=["Ugh, get that thing away from me.", "I can't believe people actually eat this.",
               "You call this work? It's pathetic.", "Don't ever touch me with those hands.",
               "That joke was just vile."],
        basic="disgusted", valence=-1),
    "calm": dict(
        words=["calm", "relaxed", "content"],
        face=["has a relaxed expression and a steady gaze", "leans back comfortably", "nods slowly while listening"],
        voice=["an even, steady tone", "a soft, unhurried voice", "a measured, quiet pace"],
        lines=["The meeting is at three, in room two.", "I'll pick up the groceries on the way home.",
               "Let's go over the schedule again.", "The train leaves at nine tomorrow.",
               "I put the keys on the kitchen table."],
        basic="neutral", valence=0),
}
NEGATIVE = ["sad", "angry", "worried", "disgusted"]
NEUTRAL_FACE = ["keeps a neutral face", "looks straight at the camera without much expression",
                "has an unreadable face", "sits still with a blank look"]
NEUTRAL_VOICE = ["a flat, even voice", "a monotone delivery", "an ordinary speaking pace"]
MASK_FACE = ["forces a polite smile", "smiles briefly, but the smile does not reach the eyes",
             "laughs nervously to cover the moment", "keeps a tight smile"]
DISTRACTORS = ["In the background another person laughs loudly.", "Someone off screen is crying.",
               "A man behind the speaker shouts at a waiter.", "Upbeat music plays in a nearby room.",
               "A child in the background is giggling.", "A television in the room shows a horror film."]
NAMES = ["Lin", "Mark", "Sofia", "Chen", "Amir", "Elena", "Tom", "Yuki"]


def pick_words(rng, emotion, n):
    """The typical word first (most of the time), then others: the first word anchors the label."""
    words = EMOTIONS[emotion]["words"]
    first = words[0] if rng.random() < 0.6 else rng.choice(words)
    rest = [w for w in words if w != first]
    return [first] + rng.sample(rest, n - 1)


def make_sample(rng, name, kind=None):
    """One sample. `kind`: consistent, masked, subtitle_only or mixed (random when None)."""
    primary = rng.choice(list(EMOTIONS))
    kind = kind or rng.choices(["consistent", "masked", "subtitle_only", "mixed"], [0.35, 0.2, 0.2, 0.25])[0]
    if kind == "masked" and primary not in NEGATIVE:
        kind = "consistent"
    if kind == "mixed" and primary == "calm":
        kind = "consistent"
    e = EMOTIONS[primary]
    line = rng.choice(e["lines"])
    secondary = None
    if kind == "consistent":
        face, voice = rng.choice(e["face"]), rng.choice(e["voice"])
        why = "The face, the voice and the words all point the same way."
        words = pick_words(rng, primary, rng.choice([1, 1, 2]))
    elif kind == "masked":
        face, voice = rng.choice(MASK_FACE), rng.choice(e["voice"])
        why = ("The smile looks like a polite mask; the voice and what is said reveal the real feeling, "
               "so the smile should not be read as happiness.")
        words = pick_words(rng, primary, rng.choice([1, 2]))
    elif kind == "subtitle_only":
        face, voice = rng.choice(NEUTRAL_FACE), rng.choice(NEUTRAL_VOICE)
        why = "The face and the voice give little away, so the emotion has to be read from the words themselves."
        words = pick_words(rng, primary, 1)
    else:  # mixed: the face shows one emotion, the voice another, and the words side with one of them
        secondary = rng.choice([k for k in EMOTIONS if k not in (primary, "calm")])
        s = EMOTIONS[secondary]
        face, voice = rng.choice(e["face"]), rng.choice(s["voice"])
        why = "The face and the voice disagree, so the character seems to feel both at once."
        words = pick_words(rng, primary, 1) + pick_words(rng, secondary, rng.choice([1, 1, 2]))
    distractor = rng.choice(DISTRACTORS) if rng.random() < 0.3 else ""
    who = rng.choice(NAMES)
    video = f"{who} {face}." + (f" {distractor}" if distractor else "")
    audio = f"{who} speaks with {voice}."
    reason = (f"In the video, {who} {face}. The audio has {voice}. The subtitle says: \"{line}\" {why}"
              + (" The background activity belongs to someone else and is not the character's emotion." if distractor else "")
              + f" Overall, {who} feels {', '.join(words)}.")
    valence = e["valence"]
    if primary == "surprised":
        valence = EMOTIONS[secondary]["valence"] if secondary else 0
    elif secondary and EMOTIONS[secondary]["valence"] not in (0, valence):
        valence = 0   # opposite polarities: no single sentiment
    return {"name": name, "video": video, "audio": audio, "subtitle": line, "openset": ", ".join(words),
            "reason": reason, "basic": e["basic"], "valence": valence, "kind": kind}


def make_split(split, n, rng):
    out = []
    while len(out) < n:
        s = make_sample(rng, f"{split}_{len(out):05d}")
        if split == "test_basic":
            # one basic label per sample: keep the samples whose label is a single clear emotion
            if s["kind"] == "mixed":
                continue
            s["openset"] = s["basic"]
        if split == "test_sentiment" and s["valence"] == 0 and rng.random() < 0.8:
            continue  # MER-UniBench drops valence 0; keep a few to exercise that rule
        out.append(s)
    return out


def main():
    rng = random.Random(SEED)
    for split, n in SPLITS.items():
        rows = make_split(split, n, rng)
        with open(os.path.join(OUT_DIR, f"{split}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{split}: {len(rows)} samples")


if __name__ == "__main__":
    main()
