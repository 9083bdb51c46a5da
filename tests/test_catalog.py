import pytest

from ecommerce_slm.catalog import CatalogError, croatian_nominative, croatian_plural, load_catalog
from ecommerce_slm.language import hr_numeral_form, number_words, render_item

REQUIRED = """Lip Balm, Toothpaste, Shampoo, Conditioner, Hand Cream, Sunscreen, Deodorant, Face Mask, Body Lotion,
Perfume, Coffee Beans, Green Tea, Olive Oil, Pasta, Rice, Chocolate Bar, Orange Juice, Mineral Water, Protein Bar,
Honey, USB Cable, Phone Charger, Wireless Mouse, Keyboard, Headphones, Power Bank, HDMI Cable, Laptop Stand,
Memory Card, Smart Watch, T-Shirt, Running Shoes, Socks, Jeans, Baseball Cap, Backpack, Umbrella, Water Bottle,
Yoga Mat, Notebook"""


def test_catalog_has_the_required_products_and_at_least_60(catalog):
    required = [name.strip() for name in REQUIRED.split(",")]
    assert len(required) == 40
    assert set(required) <= set(catalog.names)
    assert len(catalog.products) >= 60
    assert len(set(catalog.names)) == len(catalog.names)


def test_every_product_has_every_language(catalog):
    for product in catalog.products:
        assert set(product.forms) == {"en", "hr", "es"}


@pytest.mark.parametrize(
    "language, product, n, style, expected",
    [
        ("hr", "Toothpaste", 2, "words", "dvije paste za zube"),
        ("es", "Hand Cream", 3, "words", "tres cremas de manos"),
        ("hr", "Toothpaste", 5, "digits", "5 pasta za zube"),
        ("hr", "Toothpaste", 21, "words", "dvadeset jednu pastu za zube"),
        ("hr", "Shampoo", 22, "words", "dvadeset dva šampona"),
        ("hr", "Shampoo", 12, "digits", "12 šampona"),
        ("es", "Backpack", 21, "words", "veintiuna mochilas"),
        ("es", "Shampoo", 1, "words", "un champú"),
        ("en", "Lip Balm", 12, "digits", "12 lip balms"),
        ("en", "Socks", 3, "words", "three pairs of socks"),
    ],
)
def test_quantity_and_product_agree(catalog, language, product, n, style, expected):
    import random

    forms = catalog[product].forms[language][0]
    rng = random.Random(1)
    rendered = {render_item(language, forms, n, style, "add", rng) for _ in range(20)}
    assert expected in rendered


@pytest.mark.parametrize(
    "accusative, gender, nominative",
    [
        ("pastu za zube", "f", "pasta za zube"),  # the noun; the prepositional phrase keeps its case
        ("mineralnu vodu", "f", "mineralna voda"),  # adjective and noun
        ("kavu u zrnu", "f", "kava u zrnu"),  # "u zrnu" is locative, not the noun
        ("staklenku maslaca od kikirikija", "f", "staklenka maslaca od kikirikija"),  # a genitive complement
        ("web kameru", "f", "web kamera"),
        ("šampon", "m", "šampon"),  # masculine inanimate and neuter: the same form
        ("maslinovo ulje", "n", "maslinovo ulje"),
    ],
)
def test_croatian_nominative_from_the_accusative(accusative, gender, nominative):
    assert croatian_nominative(accusative, gender) == nominative


@pytest.mark.parametrize(
    "gender, few, many, plural",
    [
        ("f", "kreme za ruke", "krema za ruke", "kreme za ruke"),  # feminine: the form after 2-4
        ("n", "pakiranja kave u zrnu", "pakiranja kave u zrnu", "pakiranja kave u zrnu"),  # neuter too
        ("m", "šampona", "šampona", "šampone"),  # masculine: from the genitive plural
        ("m", "zelena čaja", "zelenih čajeva", "zelene čajeve"),  # its adjectives agree
        ("m", "balzama za usne", "balzama za usne", "balzame za usne"),  # the prepositional phrase keeps its case
        ("m", "tetrapaka mlijeka", "tetrapaka mlijeka", "tetrapake mlijeka"),  # so does a genitive complement
        ("m", "USB kabela", "USB kabela", "USB kabele"),
    ],
)
def test_croatian_plural_without_a_number(gender, few, many, plural):
    assert croatian_plural({"gender": gender, "few": few, "many": many}) == plural


def test_the_catalog_may_give_derived_forms_itself(tmp_path):
    """The nominative and the plural are derived where catalog.yaml does not give them, and its own win."""
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "products:\n  - name: Tea\n    hr: {gender: f, one: kutiju čaja, few: kutije čaja, many: kutija čaja}\n"
        "  - name: Cup\n    hr: {gender: f, one: šalicu, few: šalice, many: šalica, nominative: šalica čaja}\n"
        "  - name: Backpack\n    hr: {gender: m, one: ranac, few: ranca, many: ranaca, plural: rance}\n",
        encoding="utf-8",
    )
    products = load_catalog(path, ["hr"]).products
    tea, cup, backpack = (p.forms["hr"][0] for p in products)
    assert (tea.nominative, tea.plural) == ("kutija čaja", "kutije čaja")
    assert (cup.nominative, backpack.plural) == ("šalica čaja", "rance")
    assert "kutija čaja" in products[0].all_surface_forms("hr") and "rance" in products[2].all_surface_forms("hr")


@pytest.mark.parametrize(
    "language, product, case, expected",
    [
        ("hr", "Hand Cream", "accusative", {"kreme za ruke"}),
        ("hr", "Shampoo", "accusative", {"šampone"}),
        ("hr", "Shampoo", "nominative", {"šampon"}),  # "treba mi {item_nom}" would need a plural verb
        ("hr", "Socks", "accusative", {"čarape"}),  # a pair product: its bare name
        ("es", "Backpack", "accusative", {"mochilas", "unas mochilas", "las mochilas"}),
        ("en", "Shampoo", "accusative", {"shampoos", "the shampoos"}),
    ],
)
def test_a_plural_with_no_number_names_one_item_in_the_plural(catalog, language, product, case, expected):
    import random

    forms = catalog[product].forms[language][0]
    rng = random.Random(3)
    assert {render_item(language, forms, 1, "plural", "add", rng, case) for _ in range(40)} == expected
    with pytest.raises(ValueError, match="quantity 1"):
        render_item(language, forms, 2, "plural", "add", rng, case)


@pytest.mark.parametrize(
    "product, n, style, case, expected",
    [
        ("Toothpaste", 1, "words", "nominative", "jedna pasta za zube"),
        ("Toothpaste", 1, "words", "accusative", "jednu pastu za zube"),
        ("Toothpaste", 21, "words", "nominative", "dvadeset jedna pasta za zube"),
        ("Toothpaste", 1, "implicit", "nominative", "pasta za zube"),
        ("Toothpaste", 3, "words", "nominative", "tri paste za zube"),  # numerals take the same form either way
        ("Shampoo", 1, "words", "nominative", "jedan šampon"),
    ],
)
def test_croatian_items_as_subject_and_object(catalog, product, n, style, case, expected):
    import random

    forms = catalog[product].forms["hr"][0]
    rng = random.Random(1)
    assert expected in {render_item("hr", forms, n, style, "add", rng, case) for _ in range(20)}


def test_croatian_numeral_cases():
    assert [hr_numeral_form(n) for n in (1, 2, 4, 5, 11, 12, 14, 21, 22, 25, 31, 44)] == [
        "one",
        "few",
        "few",
        "many",
        "many",
        "many",
        "many",
        "one",
        "few",
        "many",
        "one",
        "few",
    ]


def test_number_words():
    assert number_words("en", 47) == "forty-seven"
    assert number_words("hr", 2, "f") == "dvije"
    assert number_words("es", 35) == "treinta y cinco"
    with pytest.raises(ValueError):
        number_words("en", 100)


def test_bad_catalog_names_file_product_and_form(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "products:\n  - name: Soap\n    en: {one: soap, many: soaps}\n    hr: {gender: x, one: sapun, few: sapuna, many: sapuna}\n"
    )
    with pytest.raises(CatalogError, match=r"catalog.yaml: products\[0\] \(Soap\).hr.gender: expected one of"):
        load_catalog(path, ["en", "hr"])
    with pytest.raises(CatalogError, match=r"\(Soap\).es: missing"):
        load_catalog(path, ["en", "es"])
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nope.yaml", ["en"])
