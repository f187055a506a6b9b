"""What a notebook shows: slider points, panels of widgets, plots and their Chinese labels."""
