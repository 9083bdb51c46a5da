import pytest

from ecommerce_slm.catalog import CatalogError, load_catalog
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
