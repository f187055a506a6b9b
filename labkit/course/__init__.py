"""The course: exercises and their checks, the learner edition, the Chinese edition."""
