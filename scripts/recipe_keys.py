"""Print the README's table of recipe keys from the schema (the schema's docstrings are the source)."""

from rshape.recipe import describe_keys


def main() -> None:
    print("| key | default | meaning |\n|---|---|---|")
    for key, default, doc in describe_keys():
        print(f"| `{key}` | `{default}` | {doc} |" if default else f"| `{key}` | | {doc} |")


if __name__ == "__main__":
    main()
