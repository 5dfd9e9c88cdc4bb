"""The demo catalog: a deterministic set of believable products and the one-shot seeder.

``demo_products`` builds the same catalog on every call and every machine (a
fixed-seed ``random.Random``, never global randomness or the clock), so SKUs,
prices and stock are stable across runs and environments. ``seed_catalog``
loads it into ``products`` and ``inventory`` once, and only into an empty
catalog.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

SEED = 20_240_611
_SEED_LOCK = 0x4A60_0002
IMAGE_BASE = "https://img.agora.example/products"
CURRENCY = "BRL"
OUT_OF_STOCK_RATE = 0.05
MAX_STOCK = 500
_NAME_ATTEMPTS = 12

_COLOURS = (
    "black",
    "white",
    "graphite",
    "silver",
    "navy",
    "red",
    "forest green",
    "sand",
    "sky blue",
    "terracotta",
    "charcoal",
    "olive",
)


@dataclass(frozen=True)
class _Item:
    """A product type: its noun, price band in whole reais, and category-specific traits."""

    noun: str
    lo: int
    hi: int
    traits: tuple[str, ...] = ()


_Attributes = Callable[[random.Random, str, _Item], dict[str, Any]]


@dataclass(frozen=True)
class _Category:
    slug: str
    prefix: str
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    items: tuple[_Item, ...]
    variants: tuple[str, ...]
    attributes: _Attributes
    openers: tuple[str, ...]
    details: tuple[str, ...]
    colour_in_name: bool = False


def _electronics(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_COLOURS[:5]),
        "warranty_months": rng.choice((3, 6, 12, 12, 12, 24)),
    }


def _clothing(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_COLOURS),
        "size": rng.choice(("PP", "P", "M", "M", "G", "G", "GG")),
        "material": rng.choice(item.traits),
    }


def _shoes(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_COLOURS),
        "size": rng.randint(34, 45),
        "gender": rng.choice(("women", "men", "unisex")),
    }


def _home_kitchen(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_COLOURS),
        "material": rng.choice(item.traits),
        "warranty_months": rng.choice((3, 6, 12, 12, 24)),
    }


def _sports(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "colour": rng.choice(_COLOURS),
        "sport": item.traits[0],
        "level": rng.choice(("beginner", "intermediate", "advanced")),
    }


def _toys(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "age_range": rng.choice(item.traits),
        "batteries_required": rng.random() < 0.3,
    }


def _beauty(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "skin_type": rng.choice(("all", "all", "dry", "oily", "combination", "sensitive")),
        "vegan": rng.random() < 0.45,
        "cruelty_free": rng.random() < 0.8,
    }


def _grocery(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "organic": rng.random() < 0.35,
        "origin": rng.choice(
            (
                "Minas Gerais",
                "Bahia",
                "Pará",
                "São Paulo",
                "Paraná",
                "Rio Grande do Sul",
                "Espírito Santo",
            )
        ),
        "shelf_life_days": rng.choice((90, 180, 270, 365, 540)),
    }


def _garden(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "material": rng.choice(item.traits),
        "colour": rng.choice(("green", "black", "terracotta", "grey", "natural")),
        "outdoor": True,
    }


def _automotive(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    return {
        "brand": brand,
        "compatibility": rng.choice(("universal", "universal", "hatchback", "sedan", "SUV")),
        "warranty_months": rng.choice((3, 6, 12, 12)),
    }


def _pets(rng: random.Random, brand: str, item: _Item) -> dict[str, Any]:
    species = rng.choice(item.traits)
    stages = ("junior", "adult", "adult", "senior", "all ages")
    return {
        "brand": brand,
        "species": species,
        "life_stage": rng.choice(stages) if species in ("dog", "cat") else "all ages",
    }


_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        slug="electronics",
        prefix="ELE",
        brands=("Vektra", "Lumio", "Nordtek", "Soniq", "Altair", "Kairo", "Pixelia", "Volta"),
        adjectives=(
            "Compact",
            "Slim",
            "Premium",
            "Essential",
            "Rugged",
            "Smart",
            "Studio",
            "Sleek",
        ),
        items=(
            _Item("Wireless Noise-Cancelling Headphones", 299, 2499),
            _Item("Bluetooth Speaker", 149, 1499),
            _Item("Smartwatch", 399, 3499),
            _Item('4K Smart TV 55"', 2499, 8999),
            _Item("Mechanical Keyboard", 199, 999),
            _Item("Wireless Mouse", 59, 499),
            _Item("USB-C Charger 65W", 79, 399),
            _Item("Power Bank 20000mAh", 99, 499),
            _Item('Laptop 14"', 2999, 8999),
            _Item('Tablet 11"', 1299, 5999),
            _Item("Action Camera", 899, 3999),
            _Item("True Wireless Earbuds", 149, 1999),
            _Item("USB-C Cable 2m", 50, 149),
            _Item("Full HD Webcam", 199, 899),
            _Item('Gaming Monitor 27"', 1299, 4999),
        ),
        variants=("", "", "X2", "Pro", "Max", "Lite", "Gen 3", "S"),
        attributes=_electronics,
        openers=(
            "Meet the {name}, {brand}'s answer to everyday tech.",
            "Upgrade your setup with the {name}.",
            "With the {name}, {brand} brings thoughtful design to your home or office.",
        ),
        details=(
            "Available in {colour}.",
            "Set-up takes minutes and firmware updates arrive over the air.",
            "Ships with a quick-start guide and a Brazilian-standard plug where needed.",
            "Covered by a {warranty_months}-month manufacturer warranty.",
        ),
    ),
    _Category(
        slug="books",
        prefix="BOO",
        brands=(),
        adjectives=(),
        items=(
            _Item("novel", 29, 89, ("fiction",)),
            _Item("mystery", 29, 79, ("mystery",)),
            _Item("fantasy", 39, 119, ("fantasy",)),
            _Item("history", 49, 159, ("history",)),
            _Item("cookbook", 59, 199, ("cookbook",)),
            _Item("non-fiction", 39, 149, ("non-fiction",)),
        ),
        variants=(),
        attributes=lambda rng, brand, item: {},
        openers=(),
        details=(),
    ),
    _Category(
        slug="clothing",
        prefix="CLO",
        brands=(
            "Rio Norte",
            "Costa Azul",
            "Urbana",
            "Linha Leve",
            "Mareh",
            "Tropeiro",
            "Alma Basics",
            "Serra",
        ),
        adjectives=(
            "Classic",
            "Slim-Fit",
            "Relaxed-Fit",
            "Everyday",
            "Essential",
            "Oversized",
            "Lightweight",
            "Vintage-Wash",
        ),
        items=(
            _Item("T-Shirt", 39, 149, ("cotton", "organic cotton", "cotton blend")),
            _Item("Polo Shirt", 89, 299, ("cotton piqué", "cotton blend")),
            _Item("Hoodie", 149, 399, ("cotton fleece", "cotton blend")),
            _Item("Jeans", 129, 449, ("denim", "stretch denim")),
            _Item("Chino Trousers", 129, 349, ("cotton twill", "stretch cotton")),
            _Item("Linen Shirt", 149, 399, ("linen", "linen blend")),
            _Item("Summer Dress", 119, 399, ("viscose", "linen", "cotton")),
            _Item("Rain Jacket", 199, 499, ("recycled polyester", "nylon")),
            _Item("Shorts", 59, 199, ("cotton", "linen blend", "nylon")),
            _Item("Knit Sweater", 149, 449, ("wool blend", "merino wool", "cotton")),
            _Item("Leggings", 59, 179, ("polyamide", "elastane blend")),
            _Item("Puffer Jacket", 249, 499, ("recycled polyester", "nylon")),
        ),
        variants=(),
        attributes=_clothing,
        openers=(
            "Meet the {name}, a wardrobe staple from {brand}.",
            "Cut from {material}, this {adj} piece is made for all-day comfort.",
            "{brand} designed this {adj} piece to pair easily with the rest of your wardrobe.",
        ),
        details=(
            "This piece is size {size} in {colour}; see the size guide for measurements.",
            "Machine washable at 30°C and made to last season after season.",
            "Easy to dress up or down, from the office to the weekend.",
            "The {material} feels soft from the first wear.",
        ),
        colour_in_name=True,
    ),
    _Category(
        slug="shoes",
        prefix="SHO",
        brands=(
            "Passo Firme",
            "Kinetik",
            "Trilha",
            "Andarilho",
            "Solado",
            "Velox",
            "Maré",
            "Corre",
        ),
        adjectives=(
            "Everyday",
            "Lightweight",
            "Cushioned",
            "Classic",
            "Urban",
            "Breathable",
            "Comfort",
            "All-Terrain",
        ),
        items=(
            _Item("Running Shoes", 199, 999),
            _Item("Leather Sneakers", 249, 799),
            _Item("Canvas Sneakers", 99, 349),
            _Item("Hiking Boots", 299, 999),
            _Item("Loafers", 199, 599),
            _Item("Sandals", 79, 299),
            _Item("Ankle Boots", 249, 799),
            _Item("Trail Running Shoes", 299, 999),
            _Item("Slip-Ons", 99, 299),
            _Item("Court Shoes", 149, 499),
        ),
        variants=(),
        attributes=_shoes,
        openers=(
            "Step out in the {name}.",
            "{brand} designed this {adj} pair for comfort from the first step.",
            "Made for long days on your feet, this pair goes wherever the day takes you.",
        ),
        details=(
            "This pair is size {size} (BR) in {colour}.",
            "A cushioned insole and grippy rubber outsole keep every step steady.",
            "Free exchanges if the size isn't right.",
            "Fit: {gender}; we recommend ordering your usual size.",
        ),
        colour_in_name=True,
    ),
    _Category(
        slug="home-kitchen",
        prefix="HOM",
        brands=(
            "Casa Viva",
            "Fornalha",
            "Panelux",
            "Lar Doce",
            "Cozinha Pro",
            "Aroma",
            "Nórdica Home",
            "Terracota",
        ),
        adjectives=(
            "Classic",
            "Professional",
            "Compact",
            "Everyday",
            "Premium",
            "Modern",
            "Rustic",
            "Essential",
        ),
        items=(
            _Item("Non-Stick Frying Pan 28cm", 89, 399, ("aluminium", "ceramic-coated aluminium")),
            _Item("Cookware Set (5 pcs)", 399, 2499, ("stainless steel", "ceramic-coated")),
            _Item("Electric Kettle 1.7L", 99, 499, ("stainless steel", "glass")),
            _Item("Air Fryer 4L", 299, 999, ("plastic and steel",)),
            _Item("Espresso Machine", 599, 2999, ("stainless steel",)),
            _Item("Blender 1.5L", 149, 899, ("glass", "BPA-free plastic")),
            _Item("Chef's Knife 20cm", 69, 699, ("stainless steel", "Damascus steel")),
            _Item("Bath Towel Set (4 pcs)", 99, 399, ("cotton", "Egyptian cotton")),
            _Item("Dinnerware Set (16 pcs)", 199, 899, ("ceramic", "stoneware", "porcelain")),
            _Item("Queen Duvet Cover", 149, 599, ("cotton percale", "linen")),
            _Item("Dutch Oven 24cm", 299, 1499, ("cast iron", "enamelled cast iron")),
            _Item("French Press 1L", 59, 249, ("glass and steel",)),
            _Item("Food Storage Set (10 pcs)", 49, 199, ("glass", "BPA-free plastic")),
        ),
        variants=("", "", "", "Plus", "Deluxe", "II"),
        attributes=_home_kitchen,
        openers=(
            "Make everyday cooking and living a little easier with the {name}.",
            "{brand} makes this {adj} piece from {material} for years of daily use.",
            "Bring {brand} quality home with this {adj} essential.",
        ),
        details=(
            "Finished in {colour} to suit most kitchens and homes.",
            "Made from {material} and backed by a {warranty_months}-month warranty.",
            "Easy to clean and built for years of daily use.",
            "A thoughtful gift for a housewarming or wedding list.",
        ),
    ),
    _Category(
        slug="sports",
        prefix="SPO",
        brands=("Arena", "Pulso", "Fôlego", "Altitude", "Ritmo", "Cume", "Ondas", "Vigor"),
        adjectives=(
            "Performance",
            "Training",
            "Competition",
            "Endurance",
            "Compact",
            "Lightweight",
            "Club",
            "Elite",
        ),
        items=(
            _Item("Yoga Mat 6mm", 59, 299, ("yoga",)),
            _Item("Adjustable Dumbbell Set", 299, 2499, ("strength training",)),
            _Item("Football (Size 5)", 49, 399, ("football",)),
            _Item("Cycling Helmet", 149, 899, ("cycling",)),
            _Item("Resistance Bands Set", 39, 199, ("strength training",)),
            _Item("Insulated Water Bottle 750ml", 39, 199, ("running",)),
            _Item("Tennis Racket", 199, 1499, ("tennis",)),
            _Item("Running Backpack 10L", 149, 499, ("running",)),
            _Item("Camping Tent (2-Person)", 299, 1999, ("camping",)),
            _Item("Folding Treadmill", 1999, 3499, ("running",)),
            _Item("Swim Goggles", 30, 149, ("swimming",)),
            _Item("Speed Jump Rope", 30, 129, ("cross-training",)),
        ),
        variants=("", "", "2.0", "Plus", "Team", "Max"),
        attributes=_sports,
        openers=(
            "Train smarter with the {name}.",
            "Made for {sport}, this {adj} gear from {brand} is ready session after session.",
            "Whether you're starting out or chasing a new record, {brand} has you covered.",
        ),
        details=(
            "Recommended for {level} athletes.",
            "Finished in {colour} with durable, sweat-resistant materials.",
            "Tested by {brand}'s athletes for comfort and durability.",
            "Light enough to take to the gym, the park or the beach.",
        ),
    ),
    _Category(
        slug="toys",
        prefix="TOY",
        brands=(
            "Brincar",
            "Pipa",
            "Tico-Tico",
            "Galáxia Kids",
            "Blocos & Co",
            "Curumim",
            "Pirueta",
            "Sapeca",
        ),
        adjectives=(
            "Colourful",
            "Classic",
            "Deluxe",
            "Junior",
            "Creative",
            "Adventure",
            "Mini",
            "Super",
        ),
        items=(
            _Item("Building Blocks Set (500 pcs)", 99, 599, ("6+", "8+")),
            _Item("Plush Bear 40cm", 49, 199, ("0+", "3+")),
            _Item("Remote Control Car", 149, 699, ("6+", "8+")),
            _Item("Wooden Puzzle", 29, 129, ("3+", "4+")),
            _Item("Family Board Game", 79, 299, ("8+", "10+")),
            _Item("Dollhouse", 299, 1299, ("3+", "5+")),
            _Item("Science Experiment Kit", 89, 349, ("8+", "10+")),
            _Item("Wooden Train Set", 149, 699, ("3+",)),
            _Item("Kick Scooter", 199, 899, ("5+", "8+")),
            _Item("Art & Craft Kit", 49, 249, ("4+", "6+")),
            _Item("Beginner Drone", 299, 1299, ("12+", "14+")),
        ),
        variants=("", "", "", "Edition 2", "XL", "Starter"),
        attributes=_toys,
        openers=(
            "Turn playtime into an adventure with the {name}.",
            "{brand} designed this {adj} toy to spark imagination and hours of fun.",
            "Kids love it and parents trust it: the {name} by {brand}.",
        ),
        details=(
            "Recommended for ages {age_range}.",
            "Made from child-safe materials and certified by INMETRO.",
            "A great gift for birthdays and holidays.",
            "Encourages creativity, coordination and problem-solving.",
        ),
    ),
    _Category(
        slug="beauty",
        prefix="BEA",
        brands=(
            "Flor de Lis",
            "Aurea",
            "Pele Viva",
            "Bruma",
            "Jasmim",
            "Lumina Skin",
            "Botanika",
            "Véu",
        ),
        adjectives=(
            "Hydrating",
            "Nourishing",
            "Brightening",
            "Gentle",
            "Daily",
            "Intensive",
            "Botanical",
            "Revitalising",
        ),
        items=(
            _Item("Face Serum 30ml", 49, 399),
            _Item("Vitamin C Cream 50ml", 59, 299),
            _Item("Sunscreen SPF 50", 39, 149),
            _Item("Shampoo 300ml", 19, 119),
            _Item("Conditioner 300ml", 19, 119),
            _Item("Eau de Parfum 100ml", 149, 399),
            _Item("Matte Lipstick", 29, 129),
            _Item("Volumising Mascara", 39, 159),
            _Item("Body Lotion 400ml", 29, 129),
            _Item("Facial Cleanser 150ml", 29, 149),
            _Item("Hand Cream 75ml", 10, 59),
            _Item("Hair Mask 250g", 29, 149),
        ),
        variants=("", "", "", "Sensitive", "Night", "Travel Size"),
        attributes=_beauty,
        openers=(
            "Part of {brand}'s everyday care line: the {name}.",
            "{a_adj} formula from {brand} that leaves you feeling cared for.",
            "Treat yourself to the {name}.",
        ),
        details=(
            "Recommended skin type: {skin_type}.",
            "Dermatologically tested and free from parabens.",
            "Lightly scented and quick to absorb.",
            "Apply daily as part of your routine for best results.",
        ),
    ),
    _Category(
        slug="grocery",
        prefix="GRO",
        brands=(
            "Sítio Bom",
            "Grão Dourado",
            "Fazenda Serena",
            "Colheita",
            "Bom Sabor",
            "Mercearia Nobre",
            "Raiz",
            "Pomar",
        ),
        adjectives=(
            "Artisanal",
            "Traditional",
            "Premium",
            "Selected",
            "Natural",
            "Farmhouse",
            "Gourmet",
            "Classic",
        ),
        items=(
            _Item("Specialty Coffee Beans 500g", 39, 129),
            _Item("Extra Virgin Olive Oil 500ml", 29, 119),
            _Item("Brazil Nut Mix 200g", 19, 69),
            _Item("Dark Chocolate 70% 100g", 10, 39),
            _Item("Wildflower Honey 300g", 19, 79),
            _Item("Basmati Rice 1kg", 12, 39),
            _Item("Green Tea (20 bags)", 8, 29),
            _Item("Granola 800g", 19, 59),
            _Item("Açaí Pulp 1kg", 19, 59),
            _Item("Penne Pasta 500g", 5, 20),
            _Item("Cashew Butter 250g", 24, 79),
            _Item("Sparkling Water (12-pack)", 24, 69),
        ),
        variants=("", "", "", "Family Pack", "Reserve", "Light"),
        attributes=_grocery,
        openers=(
            "Bring real flavour to your pantry with {brand}'s {noun}.",
            "From trusted producers in {origin}: the {name}.",
            "{a_adj} choice for everyday meals and special occasions.",
        ),
        details=(
            "Best enjoyed within {shelf_life_days} days of production.",
            "Packed in Brazil and delivered fresh to your door.",
            "Store in a cool, dry place and close tightly after opening.",
            "No artificial colours or flavours.",
        ),
    ),
    _Category(
        slug="garden",
        prefix="GAR",
        brands=(
            "Jardim Vivo",
            "Verdejar",
            "Raízes",
            "Semente",
            "Orquídea",
            "Capim",
            "Terra Boa",
            "Ipê Garden",
        ),
        adjectives=(
            "Heavy-Duty",
            "Weatherproof",
            "Compact",
            "Classic",
            "Eco",
            "Professional",
            "Easy-Grip",
            "Deluxe",
        ),
        items=(
            _Item("Garden Hose 20m", 79, 299, ("PVC", "reinforced PVC")),
            _Item("Pruning Shears", 39, 249, ("carbon steel", "stainless steel")),
            _Item("Plant Pot 30cm", 49, 299, ("ceramic", "terracotta", "recycled plastic")),
            _Item("Electric Lawn Mower", 899, 2499, ("steel and plastic",)),
            _Item("Solar Garden Lights (4-pack)", 59, 299, ("stainless steel", "ABS plastic")),
            _Item("Potting Soil 25L", 20, 59, ("organic compost",)),
            _Item("Watering Can 10L", 39, 149, ("galvanised steel", "recycled plastic")),
            _Item("Raised Garden Bed", 299, 1299, ("pine wood", "galvanised steel")),
            _Item("Cotton Hammock", 149, 599, ("cotton", "cotton and polyester")),
            _Item("Folding Patio Chair", 129, 699, ("eucalyptus wood", "aluminium")),
            _Item("Bird Feeder", 39, 199, ("wood", "metal")),
            _Item("Cordless Leaf Blower", 299, 1199, ("ABS plastic",)),
        ),
        variants=("", "", "", "Plus", "XL", "Set"),
        attributes=_garden,
        openers=(
            "Help your garden, balcony or patio look its best with the {name}.",
            "{brand} builds this {adj} gear to handle sun, rain and everyday use.",
            "Make outdoor jobs easier with the {name}.",
        ),
        details=(
            "Made from {material} for long-lasting outdoor use.",
            "Finished in {colour}, it blends naturally into green spaces.",
            "Simple to assemble and easy to store away.",
            "A favourite with first-time gardeners and seasoned growers alike.",
        ),
    ),
    _Category(
        slug="automotive",
        prefix="AUT",
        brands=(
            "Rodovia",
            "Motriz",
            "Turbo Line",
            "Pista",
            "Autovia",
            "Ferrum",
            "Farol",
            "Garagem",
        ),
        adjectives=(
            "Universal",
            "Heavy-Duty",
            "Compact",
            "Rugged",
            "Premium",
            "Smart",
            "Rapid",
            "Travel",
        ),
        items=(
            _Item("Car Phone Mount", 39, 199),
            _Item("Dash Cam 1080p", 249, 999),
            _Item("Portable Tyre Inflator", 149, 499),
            _Item("Microfibre Cleaning Kit", 39, 149),
            _Item("Seat Cover Set", 149, 599),
            _Item("Jump Starter 12V", 299, 1499),
            _Item("LED Headlight Bulbs H4 (pair)", 79, 399),
            _Item("Wiper Blades (pair)", 39, 149),
            _Item("Handheld Car Vacuum", 129, 449),
            _Item("Synthetic Engine Oil 5W-30 1L", 39, 89),
            _Item("Roof Cargo Box 400L", 999, 1999),
            _Item("Rubber Floor Mats (4 pcs)", 79, 299),
        ),
        variants=("", "", "", "Plus", "2.0", "Max"),
        attributes=_automotive,
        openers=(
            "Keep your car ready for the road with the {name}.",
            "{brand} built this {adj} accessory as a smart upgrade for daily drivers.",
            "Make every trip easier with the {name}.",
        ),
        details=(
            "Compatibility: {compatibility}; check the vehicle table before ordering.",
            "Includes a {warranty_months}-month {brand} warranty.",
            "Installs in minutes without special tools.",
            "Tested for the heat and humidity of Brazilian roads.",
        ),
    ),
    _Category(
        slug="pets",
        prefix="PET",
        brands=(
            "Patas",
            "Bicho Feliz",
            "Focinho",
            "Au & Miau",
            "Pet Raiz",
            "Ronron",
            "Latido",
            "Bigode",
        ),
        adjectives=(
            "Premium",
            "Natural",
            "Comfort",
            "Everyday",
            "Deluxe",
            "Playful",
            "Sturdy",
            "Cosy",
        ),
        items=(
            _Item("Dry Dog Food 10kg", 149, 499, ("dog",)),
            _Item("Adult Cat Food 3kg", 59, 199, ("cat",)),
            _Item("Orthopaedic Dog Bed", 149, 599, ("dog",)),
            _Item("Cat Scratching Post", 89, 449, ("cat",)),
            _Item("Retractable Leash 5m", 49, 199, ("dog",)),
            _Item("Clumping Cat Litter 4kg", 20, 69, ("cat",)),
            _Item("Chew Toy Set", 29, 119, ("dog",)),
            _Item("Interactive Cat Toy", 29, 149, ("cat",)),
            _Item("Pet Carrier", 129, 499, ("dog", "cat")),
            _Item("Stainless Steel Food Bowl", 19, 89, ("dog", "cat")),
            _Item("Aquarium Filter", 79, 349, ("fish",)),
            _Item("Bird Cage", 149, 599, ("bird",)),
        ),
        variants=("", "", "", "Small", "Medium", "Large"),
        attributes=_pets,
        openers=(
            "Made for happy, healthy {species_plural}: the {name}.",
            "{brand} designed this {adj} essential together with vets and pet owners.",
            "Give your {species} the {name} - they'll thank you for it.",
        ),
        details=(
            "Recommended life stage: {life_stage}.",
            "Easy to clean and made from pet-safe materials.",
            "Loved by {species_plural} and their humans across Brazil.",
            "Durable enough for daily use.",
        ),
    ),
)

_BOOK_FICTION_OPENINGS = (
    "The Silent",
    "The Last",
    "The Hidden",
    "A Quiet",
    "The Long",
    "The Forgotten",
    "The Glass",
    "The Midnight",
    "A Bright",
    "The Salt",
    "The Paper",
    "The Northern",
)
_BOOK_FICTION_NOUNS = (
    "River",
    "Garden",
    "Harbour",
    "Orchard",
    "Letter",
    "Island",
    "Cartographer",
    "Lighthouse",
    "Winter",
    "Archive",
    "Kingdom",
    "Promise",
    "Station",
    "Tide",
)
_BOOK_FICTION_SUFFIXES = ("", "", "", ": A Novel", ": Book One", ": Book Two")
_BOOK_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "history": (
        (
            "the Amazon",
            "Jazz",
            "Football",
            "Brazil",
            "the Atlantic",
            "Coffee",
            "Samba",
            "the Railways",
            "Cartography",
            "São Paulo",
        ),
        (
            "A Short History of {topic}",
            "{topic}: A History",
            "The Story of {topic}",
            "Empire of {topic}",
        ),
    ),
    "cookbook": (
        (
            "Baking",
            "Brazilian Cooking",
            "Coffee",
            "Vegetarian Cooking",
            "Street Food",
            "Bread",
            "Desserts",
            "Grilling",
            "Seafood",
            "One-Pot Meals",
        ),
        (
            "The Art of {topic}",
            "{topic} at Home",
            "Simply {topic}",
            "Everyday {topic}",
        ),
    ),
    "non-fiction": (
        (
            "Personal Finance",
            "Photography",
            "Gardening",
            "Python Programming",
            "Astronomy",
            "Negotiation",
            "Sleep",
            "Urban Design",
            "Public Speaking",
            "Data Science",
        ),
        (
            "{topic} for Everyone",
            "{topic}: A Practical Guide",
            "Understanding {topic}",
            "The {topic} Handbook",
        ),
    ),
}
_BOOK_EDITIONS = ("", "", " (2nd Edition)", " (Revised Edition)", " (Illustrated)")
_FIRST_NAMES = (
    "Ana",
    "Beatriz",
    "Carlos",
    "Daniel",
    "Eduarda",
    "Felipe",
    "Gabriela",
    "Helena",
    "Igor",
    "Júlia",
    "Lucas",
    "Mariana",
    "Rafael",
    "Sofia",
    "Thiago",
    "Clara",
    "Emily",
    "James",
    "Olivia",
    "Henry",
)
_LAST_NAMES = (
    "Almeida",
    "Barbosa",
    "Cardoso",
    "Duarte",
    "Ferreira",
    "Gomes",
    "Lima",
    "Moreira",
    "Nascimento",
    "Oliveira",
    "Pereira",
    "Ribeiro",
    "Santos",
    "Teixeira",
    "Vieira",
    "Carter",
    "Hughes",
    "Bennett",
    "Walsh",
    "Reid",
)
_PUBLISHERS = (
    "Editora Aurora",
    "Casa das Letras",
    "Editora Horizonte",
    "Pena & Tinta",
    "Editora Farol",
    "Livros do Cerrado",
    "Quarto Crescente",
    "Editora Atlântica",
)
_LANGUAGES = {"pt-BR": "Portuguese", "en": "English", "es": "Spanish"}
_GENRE_BLURBS = {
    "fiction": "A moving literary novel",
    "mystery": "A gripping mystery",
    "fantasy": "A sweeping fantasy adventure",
    "history": "A vivid work of history",
    "cookbook": "A generous, beautifully photographed cookbook",
    "non-fiction": "An accessible, practical guide",
}
_SPECIES_PLURAL = {"dog": "dogs", "cat": "cats", "fish": "fish", "bird": "birds"}


def _price_minor(rng: random.Random, lo: int, hi: int) -> int:
    """A shelf price in centavos within [lo, hi] reais, ending in ,90 or ,00."""
    reais = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    step = 1 if reais < 100 else 10 if reais < 1000 else 100
    whole = min(max(round(reais / step) * step, lo), hi)
    return whole * 100 - 10 if rng.random() < 0.7 else whole * 100


def _with_article(word: str) -> str:
    vowel_sound = word[:1] in ("a", "e", "i", "o", "u") and not word.startswith(
        ("uni", "use", "eu")
    )
    return f"{'an' if vowel_sound else 'a'} {word}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _isbn13(rng: random.Random) -> str:
    digits = [9, 7, 8, 6, 5] + [rng.randint(0, 9) for _ in range(7)]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    digits.append((10 - total % 10) % 10)
    return "".join(map(str, digits))


def _book(rng: random.Random, item: _Item) -> tuple[str, str, dict[str, Any]]:
    genre = item.traits[0]
    if genre in ("fiction", "mystery", "fantasy"):
        title = (
            f"{rng.choice(_BOOK_FICTION_OPENINGS)} {rng.choice(_BOOK_FICTION_NOUNS)}"
            f"{rng.choice(_BOOK_FICTION_SUFFIXES)}"
        )
    else:
        topics, patterns = _BOOK_TOPICS[genre]
        title = rng.choice(patterns).format(topic=rng.choice(topics)) + rng.choice(_BOOK_EDITIONS)
    language = rng.choices(tuple(_LANGUAGES), weights=(6, 3, 1))[0]
    attributes: dict[str, Any] = {
        "author": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
        "publisher": rng.choice(_PUBLISHERS),
        "pages": rng.randint(120, 880),
        "language": language,
        "format": rng.choice(("paperback", "paperback", "hardcover")),
        "isbn": _isbn13(rng),
        "genre": genre,
    }
    sentences = [f"{_GENRE_BLURBS[genre]} by {attributes['author']}."]
    extras = [
        f"{attributes['pages']} pages, published by {attributes['publisher']}.",
        f"This {attributes['format']} edition is in {_LANGUAGES[language]}.",
        "A favourite with book clubs and a perfect gift for curious readers.",
    ]
    sentences += rng.sample(extras, rng.randint(0, 2))
    return _sentence(title), " ".join(sentences), attributes


def _product(
    rng: random.Random, category: _Category, number: int, seen: set[str]
) -> dict[str, Any]:
    sku = f"{category.prefix}-{number:06d}"
    name = description = ""
    attributes: dict[str, Any] = {}
    item = category.items[0]
    for _ in range(_NAME_ATTEMPTS):
        item = rng.choice(category.items)
        if category.slug == "books":
            name, description, attributes = _book(rng, item)
        else:
            brand = rng.choice(category.brands)
            adj = rng.choice(category.adjectives)
            attributes = category.attributes(rng, brand, item)
            name = f"{brand} {adj} {item.noun}"
            if category.colour_in_name:
                name += f" - {attributes['colour'].title()}"
            elif variant := rng.choice(category.variants):
                name += f" {variant}"
            fields = {
                **attributes,
                "name": name,
                "noun": item.noun,
                "adj": adj.lower(),
                "a_adj": _with_article(adj.lower()),
                "species_plural": _SPECIES_PLURAL.get(attributes.get("species", ""), "pets"),
            }
            sentences = [rng.choice(category.openers)]
            sentences += rng.sample(category.details, rng.randint(0, 2))
            description = " ".join(_sentence(s.format(**fields)) for s in sentences)
        if name not in seen:
            break
    seen.add(name)
    image_count = rng.randint(1, 3)
    stock = 0 if rng.random() < OUT_OF_STOCK_RATE else rng.randint(1, MAX_STOCK)
    return {
        "sku": sku,
        "name": name,
        "description": description,
        "category": category.slug,
        "price_minor": _price_minor(rng, item.lo, item.hi),
        "currency": CURRENCY,
        "attributes": attributes,
        "images": [f"{IMAGE_BASE}/{sku}/{n}.jpg" for n in range(1, image_count + 1)],
        "stock": stock,
    }


def categories() -> list[str]:
    """The category slugs of the demo catalog, in the order products cycle through them."""
    return [category.slug for category in _CATEGORIES]


def demo_products(count: int = 2400) -> list[dict[str, Any]]:
    """The first ``count`` products of the demo catalog, identical on every call.

    Products cycle through the categories, so they spread evenly, and a shorter
    catalog is a prefix of a longer one.
    """
    rng = random.Random(SEED)
    seen: set[str] = set()
    products = []
    for index in range(count):
        category = _CATEGORIES[index % len(_CATEGORIES)]
        products.append(_product(rng, category, index // len(_CATEGORIES) + 1, seen))
    return products


async def seed_catalog(conn: asyncpg.Connection, count: int = 2400) -> int:
    """Load the first ``count`` demo products and their stock into an empty catalog.

    Returns how many products were inserted: 0 when ``products`` already has
    rows, including when a concurrent seeder got there first. Works whatever
    jsonb codec the connection has: the rows are copied into a text staging
    table and cast to jsonb on the server.
    """
    if count <= 0 or await conn.fetchval("SELECT EXISTS (SELECT 1 FROM products)"):
        return 0
    products = demo_products(count)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM products)"):
            return 0
        await conn.execute(
            "CREATE TEMP TABLE seed_products ("
            " sku text, name text, description text, category text,"
            " price_minor bigint, currency text, attributes text, images text"
            ") ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "seed_products",
            records=[
                (
                    p["sku"],
                    p["name"],
                    p["description"],
                    p["category"],
                    p["price_minor"],
                    p["currency"],
                    json.dumps(p["attributes"], ensure_ascii=False),
                    json.dumps(p["images"]),
                )
                for p in products
            ],
        )
        await conn.execute(
            "INSERT INTO products"
            " (sku, name, description, category, price_minor, currency, attributes, images)"
            " SELECT sku, name, description, category, price_minor, currency,"
            " attributes::jsonb, images::jsonb FROM seed_products"
        )
        await conn.copy_records_to_table(
            "inventory",
            records=[(p["sku"], p["stock"]) for p in products],
            columns=("sku", "on_hand"),
        )
    return len(products)
