"""Selenium helpers for the browser tests (tests/browser): a headless Chromium from Debian's packages,
and the chat page of ui/app.py as a person uses it.

Selenium is given the paths of both Debian's chromium and its chromedriver (`make test` installs
the packages `chromium` and `chromium-driver`, whose versions always match), so Selenium Manager
is never run and nothing is downloaded.

Selectors are what Gradio 6 renders for ui/app.py, which sets no elem_id: ARIA roles and labels,
placeholders, button and label text, and Gradio's own data-testid attributes.
"""

from __future__ import annotations

import os
import re

from selenium import webdriver
from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from ui.app import OPT_OUT_LABEL

CHROMIUM = os.environ.get("DYNALIGN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DYNALIGN_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900")

PAGE_TIMEOUT_S = 120  # the page's scripts and the Gradio app rendering, on a busy 2-core machine
ANSWER_TIMEOUT_S = 600  # a whole streamed answer (up to the UI's 512 tokens) while other tests run

# Gradio 6 DOM of ui/app.py
CHAT_LOG = (By.CSS_SELECTOR, '[role="log"][aria-label="chatbot conversation"]')
MESSAGE_BOX = (By.CSS_SELECTOR, 'textarea[placeholder="Type a message and press Enter"]')
SEND = (By.XPATH, '//button[normalize-space()="Send"]')
NEW_CONVERSATION = (By.XPATH, '//button[normalize-space()="New conversation"]')
OPT_OUT = (By.XPATH, f'//label[span[normalize-space()="{OPT_OUT_LABEL}"]]/input[@type="checkbox"]')
USER_MESSAGE = '[data-testid="user"]'  # inside CHAT_LOG; aria-label "user's message: <text>"
BOT_MESSAGE = '[data-testid="bot"]'  # aria-label "bot's message: <text>"
PLACEHOLDER = '[role="complementary"]'  # inside CHAT_LOG when it is empty: "Say hello."
STATUS_TRACKER = '[data-testid="status-tracker"]'  # one per component; class "hide" when idle
FOOTER = re.compile(r"answered by (\S+)\s*\Z")  # ui.app.FOOTER as rendered (italic, no asterisks)

# Every distinct text of the last assistant message, recorded in the page as the DOM changes
# (Selenium's polling would miss fast updates): proof that the answer arrived in pieces.
RECORD_BOT_TEXTS = """
window.__botTexts = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll('%s');
  if (!bots.length) return;
  const text = bots[bots.length - 1].innerText;
  const seen = window.__botTexts;
  if (seen[seen.length - 1] !== text) seen.push(text);
}).observe(document.body, {subtree: true, childList: true, characterData: true});
""" % BOT_MESSAGE


class ChatPage:
    """The chat page of ui/app.py, used as a person would: type, press Enter or click, read."""

    def __init__(self, driver: WebDriver, url: str):
        self.driver = driver
        self.url = url

    def wait(self, timeout: float = PAGE_TIMEOUT_S) -> WebDriverWait:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,))

    def open(self) -> ChatPage:
        self.driver.get(self.url)
        self.wait().until(EC.element_to_be_clickable(MESSAGE_BOX))
        self.wait().until(EC.presence_of_element_located(CHAT_LOG))
        return self

    # elements
    @property
    def box(self) -> WebElement:
        return self.driver.find_element(*MESSAGE_BOX)

    @property
    def opt_out(self) -> WebElement:
        return self.driver.find_element(*OPT_OUT)

    def messages(self, role: str) -> list[WebElement]:
        selector = USER_MESSAGE if role == "user" else BOT_MESSAGE
        return self.driver.find_element(*CHAT_LOG).find_elements(By.CSS_SELECTOR, selector)

    def texts(self, role: str) -> list[str]:
        return [m.text for m in self.messages(role)]

    # actions
    def type(self, text: str) -> None:
        self.wait().until(lambda _: _clicked(self.box), "the message box to take a click")
        self.box.send_keys(text)

    def press_enter(self) -> None:
        self.box.send_keys(Keys.ENTER)

    def click(self, locator) -> None:
        self.wait().until(EC.element_to_be_clickable(locator)).click()

    def record_answers(self) -> None:
        self.driver.execute_script(RECORD_BOT_TEXTS)

    def recorded_answers(self) -> list[str]:
        return self.driver.execute_script("return window.__botTexts || []")

    # waiting for the answer
    def wait_for_user_message(self, text: str) -> WebElement:
        return self.wait().until(
            lambda _: next((m for m in self.messages("user") if text in m.text), False),
            f"the user message {text!r} in the chat")

    def wait_for_answer(self, n: int = 1, timeout: float = ANSWER_TIMEOUT_S) -> str:
        """The n-th assistant message once it carries the version footer (it does from the first
        streamed piece on); its text at that moment."""
        def footed(_):
            texts = self.texts("assistant")
            return len(texts) >= n and FOOTER.search(texts[n - 1]) and texts[n - 1]
        return self.wait(timeout).until(footed, f"assistant message {n} with its 'answered by' footer")

    def busy(self) -> bool:
        """Gradio is running an event: one of its status trackers is shown (pending, generating)."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".some(e => !e.classList.contains('hide'))", STATUS_TRACKER)

    def wait_idle(self, timeout: float = ANSWER_TIMEOUT_S) -> None:
        """Until Gradio has finished its events (call it once an event is known to have started:
        the page is idle for a moment between a click and the event's start)."""
        self.wait(timeout).until(lambda _: not self.busy(), "the page to finish its events")


def words(text: str) -> list[str]:
    """The words of a text, without the version footer: markdown as rendered and as written
    compare equal word by word (list numbers and markup aside)."""
    return re.findall(r"[^\W_]+", FOOTER.sub("", text))


def shows_end_of(page_text: str, answer: str, n: int = 5) -> bool:
    """The page's message ends with the last `n` words of `answer`. (Numbered lists render their
    numbers outside the text, so whole texts are not compared.)"""
    tail = words(answer)[-n:]
    return words(page_text)[-len(tail):] == tail if tail else True


def new_driver(chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> WebDriver:
    """A headless Chromium, 1280x900, driven through the given chromedriver (no Selenium Manager)."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def _clicked(element: WebElement) -> bool:
    """Click it, unless something covers it (Gradio's status overlay while the page still loads
    on a busy machine): then False, to be polled again."""
    try:
        element.click()
        return True
    except ElementClickInterceptedException:
        return False
