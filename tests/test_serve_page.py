"""`finecap serve`'s page in headless Chromium: pick an example image, read each model's caption
off the page (side by side, equal to the Captioner's), hover a word and find its attention map
drawn over the image. Skips without Debian's chromium + chromium-driver (.ci/run installs them)."""

from __future__ import annotations

from pathlib import Path

from finecap.captioner import Captioner
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig
from finecap.serve import BackgroundServer, CaptionService, create_app
from helpers.browser import headless_chrome, needs_chromium
from helpers.tiny_captioners import make_repetitive, make_tiny_captioner

EXAMPLE = Path(__file__).parents[1] / "examples" / "scene_0.png"


# The overlay's painted pixels: how many are not transparent.
_PAINTED = """const c = document.querySelector('canvas.overlay');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"""


@needs_chromium
def test_page_shows_each_models_caption_and_a_words_attention(tmp_path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tiny = make_repetitive(make_tiny_captioner("transformer", seed=1, max_len=6))
    tiny.decoding = DecodingConfig(beam_size=2, block_trigrams=True)  # served as it says
    models = {"default": Captioner.from_pretrained(), "tiny": tiny}
    expected = {name: m.caption(load_image(EXAMPLE)).text for name, m in models.items()}
    driver = headless_chrome(tmp_path)
    try:
        with BackgroundServer(create_app(CaptionService(models))) as server:
            driver.get(f"{server.url}/")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: "Models: default" in d.find_element(By.ID, "models-line").text)
            assert driver.find_element(By.ID, "beam").get_attribute("value") == ""  # models' own
            driver.find_element(By.ID, "file").send_keys(str(EXAMPLE))

            def caption(name: str):
                found = driver.find_elements(By.CSS_SELECTOR, f'[data-model="{name}"] .caption')
                return found[0] if found else None

            wait.until(lambda d: all(caption(name) for name in models))
            columns = driver.find_elements(By.CSS_SELECTOR, ".card .model")
            assert [c.get_attribute("data-model") for c in columns] == ["default", "tiny"]
            for name in models:  # what the page shows is what the model says
                assert caption(name).text == expected[name]
            assert "batch" in driver.find_element(By.CSS_SELECTOR, ".model .numbers").text
            how = driver.find_element(By.CSS_SELECTOR, '[data-model="tiny"] .decoding').text
            assert how == "its own decoding: beam search, 2 beams, no trigram repeated"

            # Hover the default model's last word: its map is drawn over the image.
            word = caption("default").find_elements(By.CSS_SELECTOR, ".word")[-1]
            ActionChains(driver).move_to_element(word).perform()
            overlay = driver.find_element(By.CSS_SELECTOR, "canvas.overlay")
            wait.until(lambda d: overlay.get_attribute("data-word") == word.text)
            label = driver.find_element(By.CSS_SELECTOR, ".attention-label").text
            assert label == f"default: where it looked for “{word.text}”"
            assert driver.execute_script(_PAINTED) > 0
            driver.save_screenshot(str(tmp_path / "page.png"))

            # A click pins it: moving away keeps the map; a second click clears it.
            word.click()
            ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
            assert overlay.get_attribute("data-word") == word.text
            word.click()
            ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
            wait.until(lambda d: overlay.get_attribute("data-word") == "")
            assert driver.execute_script(_PAINTED) == 0
    finally:
        driver.quit()
