"""The shared page shell: the title is escaped, each page's rules come after the base ones, nothing is fetched."""

from html.parser import HTMLParser

from buildsys.html_page import BASE_STYLE, html_page


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_page_escapes_the_title_and_puts_the_pages_rules_after_the_base_style() -> None:
    page = html_page("<script>x</script> & co", "<h1>heading</h1>", ".mine { color: red; }\n")
    parser = _Tags()
    parser.feed(page)
    assert parser.title == "<script>x</script> & co"  # shown as text, never run
    assert parser.tags == ["html", "head", "meta", "title", "style", "body", "h1"]
    assert page.index(BASE_STYLE) < page.index(".mine { color: red; }")
    assert "http" not in page and "<link" not in page
