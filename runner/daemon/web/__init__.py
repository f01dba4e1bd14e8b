"""The reviewer's web pages under /ui/: their building blocks (signed links, sessions, Markdown, the timeline)."""
