from finecap.scenes.grounding import names_object


def test_synonyms_and_colour_window() -> None:
    assert names_object("a red ball on the grass", "circle", "red")
    assert names_object("There is a big dark blue striped box.", "square", "blue")
    assert not names_object("a red ball next to a blue box", "square", "red")
    assert not names_object("a green triangle", "circle", "green")
    assert not names_object("a ball", "circle", "red")
    assert names_object("a small white plain cross and a red six sided shape", "hexagon", "red")
